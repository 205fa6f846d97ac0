"""Run config: strict schema, nearest-key suggestions, type errors, overrides, value checks."""

import argparse
from pathlib import Path

import pytest

from cspwrc.cli.train_flags import add_train_flags, train_overrides
from cspwrc.engine.config import ConfigError, from_dict, load_config, to_dict

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_and_yaml_values(tmp_path):
    cfg = load_config(_write(tmp_path, "model:\n  backbone: {name: resnet18}\ntrain:\n  epochs: 3\n  img: 320\n"
                                       "optim:\n  lr: 1\n"))
    assert cfg.train.epochs == 3 and cfg.train.img == 320
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # int accepted where float expected
    assert cfg.train.batch == 16  # untouched default


def test_unknown_key_names_file_and_suggests(tmp_path):
    path = _write(tmp_path, "train:\n  epohcs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "train.epohcs" in msg and "did you mean 'epochs'" in msg


def test_unknown_section_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        load_config(_write(tmp_path, "optimizer:\n  lr: 0.1\n"))


@pytest.mark.parametrize("text, fragment", [
    ("train:\n  epochs: ten\n", "train.epochs: expected int"),
    ("train:\n  epochs: true\n", "train.epochs: expected int"),
    ("train:\n  epochs: 2.5\n", "train.epochs: expected int"),
    ("optim:\n  opt: adam\n", "optim.opt: 'adam' is not one of"),
    ("ema: 3\n", "expected a mapping"),
    ("model:\n  options: [1, 2]\n", "model.options: expected a mapping"),  # an old section, wrongly shaped
    ("model:\n  head: [1, 2]\n", "model.head: expected a mapping"),
    ("model:\n  head: {reg_max: 8.5}\n", "model.head.reg_max: expected int"),
])
def test_wrong_types_are_fatal(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        load_config(_write(tmp_path, text))


def test_malformed_yaml_and_unsafe_tags(tmp_path):
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(_write(tmp_path, "train: [1, 2\n"))
    # safe_load refuses Python object tags: nothing is constructed or run.
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(_write(tmp_path, "train: !!python/object/apply:os.system ['echo pwned']\n"))


def test_img_multiple_of_32_and_model_name(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_config(None, {"model": {"backbone": {"name": "resnet18"}}, "train": {"img": 100}})
    with pytest.raises(ConfigError, match=r"model\.backbone\.name: unknown model 'resnet1'; close matches: .*resnet18"):
        load_config(None, {"model": {"backbone": {"name": "resnet1"}}})


def test_train_overrides_and_set():
    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    args = parser.parse_args(["--epochs", "4", "--model", "resnet18", "--set", "optim.lr=0.01",
                              "--set", "ema.enabled=false", "--set", "model.head.reg_max=8",
                              "--set", "model.backbone.kwargs.wrc_normalize=softmax"])
    cfg = load_config(ROOT / "configs" / "det" / "default.yaml", train_overrides(args))
    assert cfg.train.epochs == 4 and cfg.model.backbone.name == "resnet18"
    assert cfg.optim.lr == 0.01 and cfg.ema.enabled is False and cfg.model.head.reg_max == 8
    assert cfg.model.backbone.kwargs["wrc_normalize"] == "softmax"  # --set goes into an open mapping key by key
    with pytest.raises(ConfigError, match=r"command line: unknown key 'optim\.lrr'"):
        load_config(None, train_overrides(parser.parse_args(["--model", "resnet18", "--set", "optim.lrr=1"])))


def test_flags_override_only_when_given():
    """Every flag defaults to None: a recipe's value (or the real recipe's default) stands unless the flag is given."""
    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    args = parser.parse_args([])
    assert all(v in (None, []) for v in vars(args).values()) and train_overrides(args) == {}
    assert load_config(ROOT / "configs" / "det" / "default.yaml", train_overrides(args)).train.img == 160


def test_default_recipe_is_valid():
    cfg = load_config(ROOT / "configs" / "det" / "default.yaml")
    assert cfg.model.backbone.name == "cspwrc_n" and cfg.train.img % 32 == 0 and cfg.optim.opt == "adamw"
    with pytest.raises(ConfigError, match=r"close matches: .*cspwrc_s"):
        load_config(None, {"model": {"backbone": {"name": "cspwrc_ss"}}})


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "det").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    cfg = load_config(path)
    assert cfg.train.img % 32 == 0


def test_round_trip():
    cfg = load_config(None, {"model": {"backbone": {"name": "resnet18"}}, "train": {"epochs": 7}})
    assert from_dict(to_dict(cfg)) == cfg


def test_gpu_keys_accept_their_values_and_old_configs_still_load():
    cfg = load_config(None, {"data": {"workers": "auto", "cache": "ram"}, "train": {"amp": "bf16",
                                                                                   "channels_last": False}})
    assert (cfg.data.workers, cfg.data.cache, cfg.train.amp, cfg.train.channels_last) == ("auto", "ram", "bf16", False)
    assert load_config(None, {"train": {"amp": True}, "data": {"workers": 2}}).train.amp is True  # saved runs
    for bad, fragment in (({"train": {"amp": "fp8"}}, "train.amp"), ({"data": {"cache": "disk"}}, "data.cache"),
                          ({"data": {"workers": "many"}}, "data.workers")):
        with pytest.raises(ConfigError, match=fragment):
            load_config(None, bad)
