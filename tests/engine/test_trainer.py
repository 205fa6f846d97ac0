"""Training loop: exact resume, NaN policy, unwritable checkpoints, time budget, batch pictures, eval tool."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from _tiny import ROOT, tiny_config, tiny_data, tiny_overrides
from PIL import Image

from cspwrc import atomic
from cspwrc.cli import val as eval_det
from cspwrc.engine import checkpoint as ck
from cspwrc.engine.callbacks import Callback
from cspwrc.engine.config import load_config
from cspwrc.engine.trainer import Trainer, TrainingStopped, load_resume, resolve_amp


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


class Recorder(Callback):
    """Every hook call, in order, with what a hook can rely on at that point."""

    def __init__(self) -> None:
        self.calls = []

    def on_train_start(self, trainer):
        self.calls.append(("train_start", trainer.state.epoch))

    def on_epoch_start(self, trainer, epoch):
        self.calls.append(("epoch_start", epoch))

    def on_step_end(self, trainer, step, losses):
        assert trainer.state.global_step == step + 1 and losses.dtype == torch.float64 and losses.shape == (4,)
        self.calls.append(("step_end", step))

    def on_epoch_end(self, trainer, row):
        saved = ck.read_state(trainer.out / "last.state.pt")  # the epoch's checkpoint is written by now
        assert saved["epoch"] == row["epoch"] and saved["history"][-1] == row
        assert trainer.epoch_speed.images == 16 and trainer.epoch_speed.img_s > 0
        self.calls.append(("epoch_end", row["epoch"]))

    def on_train_end(self, trainer, summary):
        self.calls.append(("train_end", summary["epochs"]))


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    """An uninterrupted 2-epoch run: the reference for resume and the input of the eval tool test. Its callback
    only reads, so the run must equal a resumed one without callbacks (test_resume_continues_exactly)."""
    out = tmp_path_factory.mktemp("full")
    cfg, recorder = tiny_config(data, out), Recorder()
    metrics = Trainer(cfg, progress=False, callbacks=[recorder]).fit()
    return out, metrics, recorder.calls


def test_callbacks_run_in_order(full_run):
    *_, calls = full_run
    assert calls == [("train_start", 0),
                     ("epoch_start", 0), ("step_end", 0), ("step_end", 1), ("epoch_end", 1),
                     ("epoch_start", 1), ("step_end", 2), ("step_end", 3), ("epoch_end", 2),
                     ("train_end", 2)]


def _weights(path):
    return ck.read_weights(path)[0]


def test_run_writes_everything(full_run):
    out, metrics, _ = full_run
    for name in ("last.safetensors", "last.state.pt", "best.safetensors", "best.state.pt", "results.csv",
                 "curves.png", "metrics.json"):
        assert (out / name).is_file(), name
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss,loss_cls,loss_box,loss_dfl,lr,map,map50") and len(rows) == 3
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["epochs"] == 2 and len(saved["stats"]) == 12 and "read_failures" in saved["skips"]
    _, meta = ck.read_weights(out / "last.safetensors")
    assert meta["model"]["backbone"]["name"] == "cspwrc_n" and meta["num_classes"] == 5 and meta["img"] == 64
    assert meta["model"]["neck"]["channels"] == [16, 32, 64] and "options" not in meta
    assert meta["category_ids"] == [1, 2, 3, 4, 5] and meta["class_names"][0] == "circle"
    assert math.isfinite(metrics["map"])


class DiesAfterEpoch(Callback):
    """The process "dies" right after epoch ``epoch``'s checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_resume_continues_exactly(full_run, data, tmp_path):
    ref_out, ref_metrics, _ = full_run
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(data, out), progress=False, callbacks=[DiesAfterEpoch(1)]).fit()
    assert ck.read_state(out / "last.state.pt")["epoch"] == 1
    cfg, state = load_resume(out)
    metrics = Trainer(cfg, resume_state=state, progress=False).fit()
    ref, got = _weights(ref_out / "last.safetensors"), _weights(out / "last.safetensors")
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    assert metrics["map"] == ref_metrics["map"]
    ref_rows = (ref_out / "results.csv").read_text().splitlines()
    got_rows = (out / "results.csv").read_text().splitlines()
    strip_time = [r.rsplit(",", 1)[0] for r in ref_rows], [r.rsplit(",", 1)[0] for r in got_rows]
    assert strip_time[0] == strip_time[1]

    # Extending a finished run: one more epoch; --weights of the original run is not re-applied on resume.
    cfg, state = load_resume(out, {"train": {"epochs": 3, "weights": str(tmp_path / "gone.safetensors")}})
    assert Trainer(cfg, resume_state=state, progress=False).fit()["epochs"] == 3
    assert len((out / "results.csv").read_text().splitlines()) == 4


def test_eval_tool_matches_training_eval(full_run, data, tmp_path):
    """tools/eval_det.py on the val split reproduces the run's final numbers from the checkpoint alone."""
    out, metrics, _ = full_run
    root = data.parent
    summary_path = tmp_path / "not" / "yet" / "summary.json"  # every output creates its folder
    rc = eval_det.main(["--weights", str(out / "last.safetensors"),
                        "--ann", str(root / "annotations/instances_val.json"),
                        "--images", str(root / "images/val"), "--out", str(tmp_path / "new" / "res.json"),
                        "--json", str(summary_path), "--no-progress", "--device", "cpu"])
    assert rc == 0
    summary = json.loads(summary_path.read_text(), parse_constant=pytest.fail)  # strict JSON: null, no NaN
    assert summary["stats"][0] == pytest.approx(metrics["map"], abs=1e-9)
    # the trainer's final evaluation and the tool agree on the per-class table and the confusion matrix
    saved = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert summary["per_class"] == saved["per_class"] and summary["detection"] == saved["detection"]
    assert sum(r["instances"] for r in saved["per_class"]) == sum(saved["detection"]["confusion_matrix"]["matrix"][i][j]
                                                                 for i in range(6) for j in range(5))
    for folder in (out, summary_path.parent):  # plots next to metrics.json / next to --json
        assert all((folder / name).stat().st_size > 1000 for name in ("confusion_matrix.png", "PR_curve.png",
                                                                       "F1_curve.png"))
    results = json.loads((tmp_path / "new" / "res.json").read_text())
    assert all(len(r["bbox"]) == 4 and r["category_id"] in range(1, 6) for r in results)


class NanAt(Callback):
    """Make the detector's real loss NaN at global step ``step`` (one bad batch): the model's forward is wrapped."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_start(self, trainer):
        real = trainer.ddp_model.forward

        def forward(*args, **kwargs):
            out = real(*args, **kwargs)
            if not trainer.ddp_model.training or trainer.state.global_step != self.step:
                return out
            return {name: value * float("nan") for name, value in out.items()}

        trainer.ddp_model.forward = forward


class Steps(Callback):
    """The global steps the loop finished, and the losses it reported (device tensors, None when skipped)."""

    def __init__(self) -> None:
        self.seen, self.losses = [], []

    def on_step_end(self, trainer, step, losses):
        self.seen.append(step)
        self.losses.append(losses)


def test_nan_loss_stops_and_keeps_last_good(data, tmp_path):
    # one step per epoch: epoch 1 = step 0, epoch 2 turns NaN
    with pytest.raises(TrainingStopped) as err:
        Trainer(tiny_config(data, tmp_path, max_steps_per_epoch=1), progress=False, callbacks=[NanAt(1)]).fit()
    msg = str(err.value)
    assert "non-finite loss at epoch 2" in msg and "last.safetensors" in msg and "(epoch 1)" in msg
    _, meta = ck.read_weights(tmp_path / "last.safetensors")
    assert meta["epoch"] == 1 and ck.read_state(tmp_path / "last.state.pt")["epoch"] == 1


def test_nan_skip_policy_counts(data, tmp_path):
    cfg = tiny_config(data, tmp_path, nan_policy="skip", max_steps_per_epoch=1, epochs=3)
    steps = Steps()
    metrics = Trainer(cfg, progress=False, callbacks=[NanAt(1), steps]).fit()
    assert metrics["skips"]["nan_steps"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["skips"]["nan_steps"] == 1
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "last.safetensors").values())
    assert steps.seen == [0, 1, 2] and steps.losses[1] is None  # the skipped step reports no losses
    assert all(t.dtype == torch.float64 and t.shape == (4,) for t in (steps.losses[0], steps.losses[2]))


def test_nan_found_by_a_mid_epoch_check_names_the_bad_step(data, tmp_path):
    """The loss is not read per step: a device-side flag, read every finite_check_steps steps, names the step."""
    steps = Steps()
    trainer = Trainer(tiny_config(data, tmp_path, batch=4), progress=False, callbacks=[NanAt(0), steps])
    trainer.finite_check_steps = 2
    with pytest.raises(TrainingStopped) as err:
        trainer.fit()  # 4 steps per epoch: the first check comes after step 1, not after step 0 nor at the epoch end
    msg = str(err.value)
    assert steps.seen == [0, 1] and "non-finite loss at epoch 1, step 0: loss=nan" in msg
    assert "no checkpoint had been written yet" in msg and not (tmp_path / "last.safetensors").exists()


def test_epoch_log_shows_throughput_and_gpu_settings_stay_off_on_cpu(data, tmp_path, capsys):
    trainer = Trainer(tiny_config(data, tmp_path, epochs=1, max_steps_per_epoch=1), progress=False)
    assert trainer.amp_dtype is None and not trainer.scaler.is_enabled()
    assert trainer.channels_last and next(trainer.model.parameters()).is_contiguous(
        memory_format=torch.channels_last)  # NHWC on CPU too (oneDNN)
    trainer.fit()
    out = capsys.readouterr()
    assert "epoch 1/1: loss=" in out.out + out.err and " img/s" in out.out + out.err
    for setting in (True, "auto", "bf16", "fp16", "off", False):
        assert resolve_amp(setting, torch.device("cpu")) is None  # autocast is only ever used on CUDA


def test_unwritable_output_stops_and_keeps_previous(data, tmp_path, monkeypatch):
    def enospc(*args, **kwargs):
        raise OSError(28, "No space left on device")

    class DiskFillsUp(Callback):
        def on_step_end(self, trainer, step, losses):
            if step == 1:  # epoch 2's only step: the disk fills up before its checkpoint
                monkeypatch.setattr(atomic.tempfile, "mkstemp", enospc)

    with pytest.raises(TrainingStopped, match="No space left on device"):
        Trainer(tiny_config(data, tmp_path, max_steps_per_epoch=1), progress=False, callbacks=[DiskFillsUp()]).fit()
    monkeypatch.undo()
    assert ck.read_state(tmp_path / "last.state.pt")["epoch"] == 1
    assert ck.read_weights(tmp_path / "last.safetensors")[1]["epoch"] == 1


def test_time_budget_refits_epochs_and_schedule(data, tmp_path):
    """train.time: 10 s spent on 2 epochs (5 s each) with a 100 s budget -> 20 epochs, schedule stretched."""
    cfg = tiny_config(data, tmp_path, time=100 / 3600)
    trainer = Trainer(cfg, progress=False)
    old_scheduler = trainer.scheduler
    trainer.state.train_time_s, trainer.state.global_step = 10.0, 2 * trainer.steps_per_epoch
    trainer._fit_epochs_to_time(epoch=1)
    assert trainer.cfg.train.epochs == 20
    assert trainer.scheduler is not old_scheduler
    assert trainer.scheduler.lr() > 0                # the new schedule's lr at this step, not its warmup start
    trainer.state.train_time_s = 1000.0            # over budget: end after the epoch that just finished
    trainer._fit_epochs_to_time(epoch=1)
    assert trainer.cfg.train.epochs == 2
    assert cfg.train.epochs == 2 and trainer.cfg is not cfg  # the caller's config is left as it was


def test_time_budget_run_stops_and_saves_fitted_epochs(data, tmp_path):
    """A budget smaller than one epoch ends the run after its first epoch, evaluated; resume keeps the epochs."""
    metrics = Trainer(tiny_config(data, tmp_path, epochs=5, time=1e-7), progress=False).fit()
    assert metrics["epochs"] == 1 and math.isfinite(metrics["map"])
    cfg, _ = load_resume(tmp_path)
    assert cfg.train.epochs == 1 and cfg.train.time == 1e-7


def test_nominal_batch_accumulates_and_batch_pictures_are_saved(data, tmp_path):
    """Nominal batch 16 of batches of 8: two batches a step once the warmup ramp is over, the last batch of an
    epoch always steps; the first batches of the run and of the close-mosaic epoch are saved as pictures."""
    over = tiny_overrides(data, tmp_path)
    over["optim"] = {"opt": "sgd", "lr": 0.01, "nominal_batch": 16}
    trainer = Trainer(load_config(None, over), progress=False)
    assert trainer.accumulate == 2 and trainer.loss_scale == 8.0
    trainer.fit()
    # warmup: 1 step, so batch 0 steps alone; batch 1 ends epoch 1; batches 2 + 3 make one step in epoch 2
    assert (trainer.state.global_step, trainer.state.optimizer_steps) == (4, 3)
    pictures = sorted(p.name for p in tmp_path.glob("train_batch*.jpg"))
    assert pictures == ["train_batch0.jpg", "train_batch1.jpg", "train_batch2.jpg", "train_batch3.jpg"]
    with Image.open(tmp_path / "train_batch0.jpg") as picture:
        assert picture.size == (3 * 64, 3 * 64)  # 8 images in a 3 x 3 grid


def test_the_callbacks_example_of_the_docs_runs(data, tmp_path, capsys):
    """docs/training.md's callback class, on a tiny run (its last two lines train the default recipe: not here)."""
    text = (ROOT / "docs" / "training.md").read_text()
    section = text.split("### Callbacks: your code in the loop", 1)[1].split("\n## ", 1)[0]
    definitions, usage = re.findall(r"```python\n(.*?)```", section, flags=re.S)  # the class, then its use
    assert "Trainer(cfg, callbacks=[LossLog(" in usage
    namespace: dict = {}
    exec(definitions, namespace)  # trusted: the project's own documentation
    cfg = tiny_config(data, tmp_path, epochs=1, batch=4)
    Trainer(cfg, progress=False, callbacks=[namespace["LossLog"](every=2)]).fit()
    out = capsys.readouterr().out
    assert "step 2: loss " in out and "step 4: loss " in out and "epoch 1: loss " in out and " img/s" in out
