"""A run fails cleanly: full disk at any point, a resume that does not fit, two runs in one folder, SIGTERM,
images that break after the check (substituted; gone for good: exit 3). Exit 2 = refused before training,
3 = stopped, the last epoch kept."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _tiny import ROOT, cli_args, tiny_config, tiny_data

from cspwrc import atomic
from cspwrc.cli import train, val
from cspwrc.data import CocoDetection, build_loader
from cspwrc.det import build_detector
from cspwrc.engine import checkpoint as ck
from cspwrc.engine.callbacks import Callback
from cspwrc.engine.evaluate import evaluate
from cspwrc.engine.lock import LOCK_NAME, RunLock
from cspwrc.engine.rundir import next_free_run_dir
from cspwrc.engine.trainer import Trainer, TrainingStopped

TRAIN = str(ROOT / "tools" / "train_det.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def one_epoch_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run; tests copy it before resuming from it."""
    out = tmp_path_factory.mktemp("run1")
    Trainer(tiny_config(data, out, epochs=1), progress=False).fit()
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _epoch(run: Path) -> int:
    return ck.read_state(run / "last.state.pt")["epoch"]


# ----------------------------------------------------------------------------------------------- full disk
SAVE_AT_LIMITS = r"""
import json, resource, signal, sys
from pathlib import Path
from cspwrc.atomic import WriteError
from cspwrc.engine import checkpoint as ck
from cspwrc.engine.callbacks import Callback
run = Path(sys.argv[1])
state, (weights, meta) = ck.read_state(run / "last.state.pt"), ck.read_weights(run / "last.safetensors")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
for limit in json.loads(sys.argv[2]):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        ck.save_checkpoint(run, "last", weights, {**meta, "epoch": 99}, {**state, "epoch": 99})
        outcome = "saved"
    except WriteError as err:
        outcome = type(err.__cause__).__name__ + ": " + str(err)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    print(json.dumps([limit, outcome, ck.read_state(run / "last.state.pt")["epoch"],
                      ck.read_weights(run / "last.safetensors")[1]["epoch"]]))
"""


def test_full_disk_at_any_point_is_a_write_error_and_keeps_the_checkpoint(one_epoch_run: Path,
                                                                        tmp_path: Path) -> None:
    """RLIMIT_FSIZE fails the write at a chosen byte: early (OSError from write) and inside torch.save's zip
    writer (RuntimeError from inline_container.cc) must end the same way: WriteError, previous files kept."""
    run = _copy(one_epoch_run, tmp_path)
    size = (run / "last.state.pt").stat().st_size
    limits = [0, 100, 4096, size // 3, size // 2, size - 64]
    done = subprocess.run([sys.executable, "-c", SAVE_AT_LIMITS, str(run), json.dumps(limits)], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r[0] for r in rows] == limits
    for limit, outcome, state_epoch, weights_epoch in rows:
        assert "last.state.pt" in outcome and "previous file" in outcome, (limit, outcome)
        assert (state_epoch, weights_epoch) == (1, 1), limit  # the old checkpoint, whole
    causes = {outcome.split(":")[0] for _, outcome, _, _ in rows}
    assert {"OSError", "RuntimeError"} <= causes  # both failure types were met and converted
    assert not list(run.glob(".*.tmp"))


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def test_full_disk_during_training_is_exit_3(one_epoch_run: Path, tmp_path: Path) -> None:
    run = _copy(one_epoch_run, tmp_path)
    limit = (run / "last.state.pt").stat().st_size // 2  # fails inside torch.save of epoch 2's state
    done = subprocess.run([sys.executable, TRAIN, "--resume", str(run), "--epochs", "2", "--no-progress"],
                          capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=_limit_file_size(limit))
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert "stopped: could not write" in done.stderr and "last.state.pt" in done.stderr
    assert "Traceback" not in done.stderr
    assert _epoch(run) == 1 and ck.read_weights(run / "last.safetensors")[1]["epoch"] == 1


@pytest.mark.parametrize("stale_temp_file", [False, True])
def test_read_only_run_dir_is_exit_3_with_one_line(one_epoch_run: Path, tmp_path: Path, stale_temp_file: bool,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder that became read-only under a killed run's lock file: the lock opens (the file exists), every
    write fails, and so does removing anything. Exit 3 with one line, also from releasing the lock at the end.

    As root, chmod does not stop writes: the folder's refusals are simulated where they happen (file creation by
    atomic_write, unlink)."""
    run = _copy(one_epoch_run, tmp_path)
    (run / LOCK_NAME).write_text("12345\n")  # a kill -9'ed run's lock file: nobody holds it
    if stale_temp_file:
        (run / ".last.state.pt.abcd.tmp").write_bytes(b"a killed run's write")
    unlink = Path.unlink

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    def unlink_outside(self: Path, missing_ok: bool = False) -> None:
        if self.parent == run:
            refuse()
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(Path, "unlink", unlink_outside)
    assert train.main(["--resume", str(run), "--epochs", "2", "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("stopped: "), err
    assert "Permission denied" in err and str(run) in err
    assert ("stale temp file" in err) == stale_temp_file
    assert _epoch(run) == 1


# ----------------------------------------------------------------------------------------------- resume mismatch
def test_resume_with_another_model_or_class_count_is_exit_2(one_epoch_run: Path, data: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(one_epoch_run, tmp_path)
    assert train.main(["--resume", str(run), "--model", "cspwrc_s", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model: saved 'cspwrc_n', now 'cspwrc_s'" in err and "Resume without --model" in err
    assert len(err.splitlines()) == 1 and "size mismatch" not in err

    fewer = data.parent / "two_classes.yaml"
    fewer.write_text(data.read_text().replace("names: [circle, square, triangle, star, cross]",
                                              "categories: [circle, square]"))
    assert train.main(["--resume", str(run), "--data", str(fewer), "--no-progress"]) == 2
    assert "number of classes: saved 5, now 2" in capsys.readouterr().err

    # Other detector options: same name and classes, other shapes -> one line, not hundreds of size mismatches.
    assert train.main(["--resume", str(run), "--set", "model.neck.channels=[32,64,128]",
                       "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the saved weights do not fit this model" in err and len(err.splitlines()) == 1
    assert _epoch(run) == 1 and not (run / LOCK_NAME).exists()


# ----------------------------------------------------------------------------------------------- the run lock
HOLD_LOCK = ("import sys, time; from cspwrc.engine.lock import RunLock; "
             "lock = RunLock(sys.argv[1]); lock.acquire(); time.sleep(120)")


def test_live_run_blocks_a_second_one_and_a_killed_one_does_not(one_epoch_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(one_epoch_run, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not (run / LOCK_NAME).is_file() or not (run / LOCK_NAME).read_text().strip():
            assert time.monotonic() < deadline and holder.poll() is None, "the lock holder did not start"
            time.sleep(0.05)
        (run / ".last.state.pt.live.tmp").write_bytes(b"a live run's write in progress")
        assert train.main(["--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "another live process" in err
        assert (run / ".last.state.pt.live.tmp").exists()  # the refused run touched nothing
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # as a crashed run would: the file stays, the lock goes
        holder.wait()
    assert (run / LOCK_NAME).read_text().strip() == str(holder.pid)
    assert train.main(["--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert _epoch(run) == 2 and not (run / LOCK_NAME).exists()


def test_out_naming_a_file_is_exit_2(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "taken.txt"
    out.write_text("not a folder")
    assert train.main(cli_args(data, out, epochs=1)) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and out.read_text() == "not a folder"


# ----------------------------------------------------------------------------------------------- signals
class AfterEpoch1(Callback):
    """Runs ``action()`` once epoch 1 is saved."""

    def __init__(self, action: Callable[[], object]) -> None:
        self.action = action

    def on_epoch_end(self, trainer: Trainer, row: dict) -> None:
        if row["epoch"] == 1:
            self.action()


def test_sigint_stops_after_the_step_with_the_last_epoch_kept(data: Path, tmp_path: Path) -> None:
    ctrl_c = AfterEpoch1(lambda: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C while epoch 2 is about to start
    before = signal.getsignal(signal.SIGINT)  # Python's default handler, or SIG_IGN in a background job
    with pytest.raises(TrainingStopped, match=r"SIGINT during epoch 2: stopped; kept .*\(epoch 1 of 2\)"):
        Trainer(tiny_config(data, tmp_path), progress=False, callbacks=[ctrl_c]).fit()
    assert _epoch(tmp_path) == 1
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_sigterm_stops_cleanly_and_resume_finishes(data: Path, tmp_path: Path) -> None:
    sig = signal.SIGTERM
    out = tmp_path / "run"
    log = tmp_path / "train.log"
    proc = subprocess.Popen([sys.executable, TRAIN, *cli_args(data, out, epochs=3)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=ENV)
    deadline = time.monotonic() + 240
    while not (out / "results.csv").exists():  # epoch 1 is saved
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 3, log.read_text()[-3000:]
    text = log.read_text()
    assert f"stopped: {sig.name} during epoch" in text and f"continue with --resume {out}" in text
    assert "Traceback" not in text
    kept = _epoch(out)
    assert kept >= 1 and f"(epoch {kept} of 3)" in text and not (out / LOCK_NAME).exists()
    done = subprocess.run([sys.executable, TRAIN, "--resume", str(out), "--no-progress"], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert _epoch(out) == 3


# ----------------------------------------------------------------------------------------------- val read failures
def test_val_image_breaking_after_the_check_is_substituted_and_counted(data: Path, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    root = Path(shutil.copytree(data.parent, tmp_path / "shapes"))
    dataset = CocoDetection(root / "annotations" / "instances_val.json", root / "images" / "val", img=64,
                            progress=False)
    broken = dataset.report.images[dataset.ids[0]]
    broken.path.write_bytes(b"\xff\xd8 broken after the check")
    model = build_detector(backbone="cspwrc_n", num_classes=dataset.num_classes, neck={"channels": [16, 32, 64]}).eval()
    loader = build_loader(dataset, 4, train=False)
    with caplog.at_level(logging.WARNING, logger="cspwrc.data"):
        result = evaluate(model, loader, dataset.coco_gt(), dataset.label_to_category_id, torch.device("cpu"),
                          progress=False)
    logged = [r for r in caplog.records if "read failure" in r.getMessage()]
    assert result.read_failures == len(logged) == 1
    assert result.num_images == len(dataset) - 1  # the substitute is scored once, the broken image not at all


@pytest.mark.parametrize("split, workers", [("train", 0), ("train", 1), ("val", 1)])
def test_images_gone_for_good_during_a_run_stop_it_with_exit_3_and_the_epoch_kept(
        split: str, workers: int, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """All images of a split deleted after epoch 1: the dataset gives up after MAX_SUBSTITUTES failures in a row and
    the run stops with one line naming the last file and the kept epoch, also when torch re-raises the error from a
    loader worker (whose message is the worker's whole traceback)."""
    root = Path(shutil.copytree(data.parent, tmp_path / "shapes"))
    delete = AfterEpoch1(lambda: [image.unlink() for image in (root / "images" / split).iterdir()])
    out = tmp_path / "run"
    rc = train.main([*cli_args(root / data.name, out), "--workers", str(workers), "--set", "train.eval_interval=2",
                     "--set", "train.max_steps_per_epoch=1", "--set", "data.cache=none"],  # read files every epoch
                    callbacks=[delete])
    err = capsys.readouterr().err
    stopped = [line for line in err.splitlines() if line.startswith("stopped: ")]
    assert rc == 3 and len(stopped) == 1 and "Traceback" not in err, err
    assert "data broke during epoch 2: 10 consecutive unreadable images; last: image id=" in stopped[0]
    assert f"image file missing: {root / 'images' / split}" in stopped[0]
    assert f"kept {out / 'last.state.pt'} (epoch 1 of 2); continue with --resume {out}" in stopped[0]
    assert _epoch(out) == 1


def test_val_images_gone_for_good_stop_the_val_command_with_exit_3(one_epoch_run: Path, data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(shutil.copytree(data.parent, tmp_path / "shapes"))
    build = val.build_loader

    def build_then_delete(*args: object, **kwargs: object) -> object:  # after the data check, before reading
        loader = build(*args, **kwargs)
        for image in (root / "images" / "val").iterdir():
            image.unlink()
        return loader

    monkeypatch.setattr(val, "build_loader", build_then_delete)
    rc = val.main(["--weights", str(one_epoch_run / "last.safetensors"), "--ann",
                   str(root / "annotations" / "instances_val.json"), "--images", str(root / "images" / "val"),
                   "--workers", "1", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    stopped = [line for line in err.splitlines() if line.startswith("stopped: ")]
    assert rc == 3 and len(stopped) == 1 and "Traceback" not in err, err
    assert "data broke during evaluation: 10 consecutive unreadable images; last: image id=" in stopped[0]
    assert f"image file missing: {root / 'images' / 'val'}" in stopped[0]


def test_long_file_names_are_shortened_in_messages(data: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    root = Path(shutil.copytree(data.parent, tmp_path / "shapes"))
    ann = root / "annotations" / "instances_val.json"
    coco = json.loads(ann.read_text())
    coco["images"][0]["file_name"] = "x" * 100_000 + ".png"
    ann.write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING, logger="cspwrc.data"):
        dataset = CocoDetection(ann, root / "images" / "val", img=64, progress=False)
    assert len(dataset.report.skipped) == 1
    assert max(len(r.getMessage()) for r in caplog.records) < 1000
    assert len(str(dataset.report.skipped[0])) < 1000


def test_numbered_run_dirs_skip_a_held_folder_and_reuse_a_stale_one(tmp_path: Path) -> None:
    run = tmp_path / "det"
    run.mkdir()
    lock = RunLock(run)
    lock.acquire()  # a live run before its first checkpoint: only run.lock in the folder
    try:
        assert next_free_run_dir(run) == tmp_path / "det2"
    finally:
        lock._fh.close()  # dropped as by kill -9: the file stays, the lock goes
    assert (run / LOCK_NAME).is_file() and next_free_run_dir(run) == run
