"""cspwrc.experiments.step_profile (tools/profile_step.py): the pieces of a real training step, timed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cspwrc.data import ensure_shapes_dataset
from cspwrc.experiments import step_profile


def test_profile_times_every_piece_of_the_recipes_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ensure_shapes_dataset(tmp_path / "shapes", num_train=16, num_val=4, seed=3)
    out = tmp_path / "prof.json"
    code = step_profile.main(["--data", str(data), "--model", "cspwrc_n", "--set", "model.neck.channels=[16,32,64]",
                              "--set", "model.head.reg_max=1", "--img", "64", "--batch", "4", "--steps", "2",
                              "--warmup", "1", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    pieces = result["pieces_ms"]
    assert list(pieces) == list(step_profile.PIECES) and all(ms >= 0 for ms in pieces.values())
    assert pieces["forward"] > 0 and pieces["backward"] > 0 and pieces["assign"] > 0 and pieces["ema"] > 0
    # The pieces are the step: their medians add up to about the median step (medians of sums vs sums of medians).
    assert sum(pieces.values()) == pytest.approx(result["step_ms"], rel=0.5)
    assert result["images_per_s_without_loader"] >= result["images_per_s"] > 0
    assert (result["batch"], result["img"], result["threads"]) == (4, 64, 1)
    assert "img/s" in capsys.readouterr().out


def test_bad_recipe_key_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert step_profile.main(["--set", "model.head.reg_mx=1", "--steps", "1"]) == 2
    assert "did you mean 'reg_max'" in capsys.readouterr().err
