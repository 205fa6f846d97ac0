"""Training conveniences: --patience, --eval-interval, the per-epoch log line, TensorBoard and the other reporting
callbacks, resume --epochs."""

from __future__ import annotations

import argparse
import json
import re

import pytest
from _tiny import tiny_config, tiny_data

from cspwrc.cli.train_flags import add_train_flags, train_overrides
from cspwrc.engine import trainer as trainer_mod
from cspwrc.engine.callbacks import Callback
from cspwrc.engine.config import ConfigError, load_config
from cspwrc.engine.evaluate import EvalResult
from cspwrc.engine.guard import TrainingStopped
from cspwrc.engine.loggers import BatchPictures, ResultsFiles, TensorBoardLogger
from cspwrc.engine.trainer import Trainer, load_resume


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def fake_eval(monkeypatch):
    """Replace COCOeval by a scripted mAP per call (the tests are about the loop, not the scores)."""
    maps: list[float] = []
    calls: list[int] = []

    def scripted(*args, **kwargs):
        calls.append(1)
        return EvalResult(stats=[maps.pop(0), 0.5] + [0.0] * 10)

    monkeypatch.setattr(trainer_mod, "evaluate", scripted)
    return maps, calls


def _run(data, out, **train):
    return Trainer(tiny_config(data, out, max_steps_per_epoch=1, tensorboard=False, **train), progress=False)


def test_patience_and_eval_interval(data, tmp_path, fake_eval, capsys):
    maps, calls = fake_eval
    maps.extend([0.3, 0.2])  # evaluated at epochs 2 and 4: no gain for 2 epochs -> stop after epoch 4 of 6
    metrics = _run(data, tmp_path / "run", epochs=6, eval_interval=2, patience=2).fit()
    assert len(calls) == 2 and metrics["epochs"] == 4 and metrics["best_epoch"] == 2
    assert metrics["early_stop"] == {"patience": 2, "stopped_after_epoch": 4}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["early_stop"]["stopped_after_epoch"] == 4
    log = capsys.readouterr().out
    assert "early stopping: no val mAP gain for 2 epochs (patience 2); best 0.3000 at epoch 2" in log
    lines = [line for line in log.splitlines() if re.match(r"epoch \d/6: ", line)]
    assert len(lines) == 4  # one line per epoch; mAP only where evaluated
    assert [("mAP=" in line) for line in lines] == [False, True, False, True]
    assert re.match(r"epoch 2/6: loss=\S+ cls=\S+ box=\S+ dfl=\S+ lr=\S+ time=\S+s mAP=0\.3000 mAP50=0\.5000 "
                    r"train=\S+s \S+ img/s$", lines[1])


def test_improving_run_is_not_stopped_and_last_epoch_is_evaluated(data, tmp_path, fake_eval):
    maps, calls = fake_eval
    maps.extend([0.1, 0.2])
    metrics = _run(data, tmp_path / "run", epochs=3, eval_interval=2, patience=1).fit()
    assert len(calls) == 2 and metrics["epochs"] == 3 and metrics["early_stop"]["stopped_after_epoch"] is None


def test_resume_with_fewer_epochs_is_refused_and_more_is_announced(data, tmp_path, fake_eval, capsys):
    fake_eval[0].extend([0.1, 0.1])
    out = tmp_path / "run"
    _run(data, out, epochs=2).fit()
    with pytest.raises(ConfigError, match=r"--epochs 1: .* already completed 2 epochs; resume with --epochs 2 or more"):
        load_resume(out, {"train": {"epochs": 1}})
    cfg, state = load_resume(out, {"train": {"epochs": 3}})
    Trainer(cfg, resume_state=state, progress=False)
    assert "extending the run from 2 to 3 epochs" in capsys.readouterr().out


def test_flags_and_their_checks():
    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    over = train_overrides(parser.parse_args(["--patience", "5", "--eval-interval", "3"]))
    cfg = load_config(None, over)
    assert cfg.train.patience == 5 and cfg.train.eval_interval == 3
    for bad, key in ((["--eval-interval", "0"], "eval_interval"), (["--patience", "-1"], "patience")):
        with pytest.raises(ConfigError, match=f"train.{key}: must be >= "):
            load_config(None, train_overrides(parser.parse_args(bad)))


def test_tensorboard_scalars(data, tmp_path, fake_eval):
    pytest.importorskip("torch.utils.tensorboard", reason="tensorboard not installed (optional extra [tb])")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    fake_eval[0].extend([0.25, 0.5])
    out = tmp_path / "run"
    Trainer(tiny_config(data, out, max_steps_per_epoch=1), progress=False).fit()
    events = accumulator.EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {"train/loss", "train/loss_cls", "misc/lr", "val/map", "val/map50"} <= set(events.Tags()["scalars"])
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("val/map")] == [(1, 0.25), (2, 0.5)]


def test_reporting_is_default_callbacks_and_teardown_always_runs(data, tmp_path, fake_eval):
    """results.csv, TensorBoard and the batch pictures are the default callbacks (before the caller's); a run that a
    callback stops mid-epoch still tears every callback down (the TensorBoard writer closed) and releases its lock."""
    fake_eval[0].extend([0.25, 0.5])
    seen: list[str] = []

    class Stopper(Callback):
        def on_epoch_end(self, trainer, row):
            raise TrainingStopped("stopped by a callback")

        def on_teardown(self, trainer):
            seen.append("teardown")

    out = tmp_path / "run"
    trainer = Trainer(tiny_config(data, out, max_steps_per_epoch=1, tensorboard=True), progress=False,
                      callbacks=[Stopper()])
    assert [type(c) for c in trainer.callbacks[:3]] == [ResultsFiles, TensorBoardLogger, BatchPictures]
    board = trainer.callbacks[1]
    closed: list[bool] = []
    real_start = board.on_train_start

    def start(tr):
        real_start(tr)
        if board.writer is not None:  # tensorboard installed: watch the writer being closed
            real_close = board.writer.close
            board.writer.close = lambda: (closed.append(True), real_close())

    board.on_train_start = start
    with pytest.raises(TrainingStopped):
        trainer.fit()
    assert seen == ["teardown"] and board.writer is None
    assert closed in ([True], [])  # [] only without the optional tensorboard package
    assert (out / "results.csv").is_file() and (out / "train_batch0.jpg").is_file()
    assert not trainer.lock.path.exists()
