"""The flags of ``cspwrc train`` (and of the tools that take a training recipe), one table: flag -> config key, type,
help. :func:`add_train_flags` builds the parser from it and :func:`train_overrides` turns the parsed flags (and every
``--set KEY=VALUE``) into the nested overrides of :func:`cspwrc.engine.config.load_config`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from cspwrc.det.legacy import nested_spelling
from cspwrc.engine.config import set_dotted
from cspwrc.errors import ConfigError

__all__ = ["TRAIN_FLAGS", "Flag", "add_train_flags", "train_overrides", "workers_arg"]


def workers_arg(text: str) -> int | str:
    """``--workers``: a number or ``auto``."""
    return text if text == "auto" else int(text)


@dataclass(frozen=True)
class Flag:
    """One command-line flag: its dotted config key (None: not a config value, e.g. ``--config``), type, help."""

    name: str
    key: str | None
    type: Callable[[str], Any]
    help: str

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


TRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("--config", None, str, "run config YAML or a packaged recipe name (default: default, or real with --data; "
         "also sgd, ...)"),
    Flag("--epochs", "train.epochs", int, "epochs to train"),
    Flag("--img", "train.img", int, "square image size, a multiple of 32"),
    Flag("--batch", "train.batch", int, "images per batch (per process)"),
    Flag("--model", "model.backbone.name", str, "timm backbone name, e.g. cspwrc_s, cs3darknet_s, resnet18"),
    Flag("--data", "data.path", str, "data YAML; default: the embedded shapes data set"),
    Flag("--weights", "train.weights", str, "initialise from a local checkpoint (cspwrc .safetensors or "
         "backbone-only)"),
    Flag("--resume", None, str, "continue a run: its run dir or its last.state.pt"),
    Flag("--device", "train.device", str, "auto, cpu, cuda, cuda:1, ..."),
    Flag("--workers", "data.workers", workers_arg, "loader processes, or auto (sized to the machine)"),
    Flag("--out", "train.out", str, "run directory"),
    Flag("--seed", "train.seed", int, "random seed"),
    Flag("--patience", "train.patience", int, "early stopping: epochs without a val mAP gain (0 = off)"),
    Flag("--eval-interval", "train.eval_interval", int, "evaluate every K epochs (and after the last)"),
    Flag("--time", "train.time", float, "training budget in hours: refits --epochs to it after each epoch"),
)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of :data:`TRAIN_FLAGS`, then ``--set KEY=VALUE`` (repeatable, any config key)."""
    for flag in TRAIN_FLAGS:
        parser.add_argument(flag.name, type=flag.type, help=flag.help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config key, e.g. --set optim.lr=0.01 --set model.loss.assigner.static_epochs=2")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The overrides given on the command line as a nested dict: the flags with a config key, then every ``--set``
    (its value read as YAML, so ``3`` is an int); the flat model spelling of earlier versions is refused with the
    nested key."""
    data: dict[str, Any] = {}
    for flag in TRAIN_FLAGS:
        value = getattr(args, flag.dest, None)
        if flag.key is not None and value is not None:
            set_dotted(data, flag.key, value)
    for item in getattr(args, "set", []) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"command line: --set expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"command line: --set {item!r}: {err}") from err
        key = key.strip()
        nested = nested_spelling(key)
        if nested is not None:  # files of earlier versions still load; a command line is written today
            raise ConfigError(f"command line: --set {key}: the model options are nested now: --set {nested}=...")
        set_dotted(data, key, value)
    return data
