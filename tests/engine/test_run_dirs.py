"""Run directories: a second run into an occupied --out gets the next numbered folder (Ultralytics' increment_path)."""

from __future__ import annotations

from pathlib import Path

from _tiny import tiny_config, tiny_data

from cspwrc.engine.rundir import next_free_run_dir
from cspwrc.engine.trainer import Trainer


def test_next_free_run_dir(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert next_free_run_dir(runs / "det") == runs / "det"  # missing
    (runs / "det").mkdir(parents=True)
    (runs / "det" / ".last.state.pt.x1y2.tmp").write_bytes(b"")
    assert next_free_run_dir(runs / "det") == runs / "det"  # nothing but a killed run's temp file
    (runs / "det" / "last.safetensors").write_bytes(b"x")
    (runs / "det2").mkdir()
    (runs / "det2" / "results.csv").write_text("x")
    assert next_free_run_dir(runs / "det") == runs / "det3"
    (runs / "file").write_text("x")
    assert next_free_run_dir(runs / "file") == runs / "file"  # a file is left to the run's own output checks


def test_trainer_moves_to_a_new_folder_unless_exist_ok(tmp_path: Path) -> None:
    data, out = tiny_data(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / "last.safetensors").write_bytes(b"a previous run")
    cfg = tiny_config(data, out)
    trainer = Trainer(cfg, progress=False, new_run_dir=True)
    assert trainer.out == tmp_path / "run2" and trainer.cfg.train.out == str(tmp_path / "run2")
    assert cfg.train.out == str(out)  # the caller's config is not changed; trainer.cfg is the effective one
    assert Trainer(tiny_config(data, out), progress=False).out == out  # exist_ok (the library default)
    assert (out / "last.safetensors").read_bytes() == b"a previous run"
