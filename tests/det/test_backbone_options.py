"""Options meant for cspwrc backbones (the default recipe's model.backbone.kwargs) never break another timm backbone:
every backbone the docs advertise trains a step with the default recipe's model options."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from cspwrc.det import build_detector
from cspwrc.engine.config import load_config
from cspwrc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = load_config(ROOT / "configs" / "det" / "default.yaml").model  # the demo's resolved DetectorConfig
RECIPE_KWARGS = RECIPE.backbone.kwargs
ADVERTISED = ["cspwrc_n", "cspwrc_s", "cs3darknet_s", "resnet18"]  # --help, README, docs/training.md


@pytest.mark.parametrize("name", ADVERTISED)
def test_one_training_step_with_the_default_recipe_options(name: str, caplog: pytest.LogCaptureFixture) -> None:
    assert RECIPE_KWARGS, "the recipe no longer sets cspwrc-only options: test is moot"
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="cspwrc.det"):
        model = build_detector(name, num_classes=2, cfg=RECIPE)
    cspwrc = name.startswith("cspwrc")
    # cspwrc backbones take the options; any other one drops them, says which, and saves what it applied.
    assert model.config["backbone"]["kwargs"] == (RECIPE_KWARGS if cspwrc else {})
    dropped = [r.getMessage() for r in caplog.records if "does not take" in r.getMessage()]
    assert (dropped == []) if cspwrc else all(key in " ".join(dropped) for key in RECIPE_KWARGS)

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.head.parameters()]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    loss = model.train()(torch.rand(2, 3, 64, 64), targets)["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.head.parameters(), strict=True))


def test_a_typo_is_not_dropped() -> None:
    with pytest.raises(ConfigError, match=r"backbone\.kwargs: cspwrc_n takes no 'wrc_normalise'; did you mean "
                                          r"'wrc_normalize'\?"):
        build_detector({"name": "cspwrc_n", "kwargs": {"wrc_normalise": "relu"}}, num_classes=2, cfg=RECIPE)
