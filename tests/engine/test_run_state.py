"""cspwrc.engine.run_state: every RunState field is saved and restored (one field list, dataclasses.fields)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from timm.utils import ModelEmaV3

from cspwrc.engine.run_state import RunState, build_training_state, restore_training_state


class _Scaler:
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _Scheduler:
    def state_dict(self) -> dict:
        return {}


def _changed(value: object) -> object:
    """A value of the same type that differs from ``value`` (the field's default)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 7
    if isinstance(value, list):
        return [{"epoch": 1, "map": 0.5}]
    raise AssertionError(f"give RunState field type {type(value).__name__} a changed value here")


def test_every_run_state_field_round_trips(tmp_path: Path) -> None:
    default = RunState()
    run = RunState(**{f.name: _changed(getattr(default, f.name)) for f in dataclasses.fields(RunState)})
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEmaV3(model)
    st = build_training_state(run, model, optimizer, _Scheduler(), _Scaler(), ema, {"train": {}}, {})
    torch.save(st, tmp_path / "s.pt")
    restored = restore_training_state(torch.load(tmp_path / "s.pt", weights_only=True), tmp_path, model, optimizer,
                                      _Scaler(), ema)
    assert restored == run
    for f in dataclasses.fields(RunState):
        assert getattr(restored, f.name) != getattr(default, f.name), f.name
