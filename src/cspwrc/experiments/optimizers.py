"""What optimizer each race contestant really trained with, read back from its finished run.

Asked-for settings can differ from used ones: Ultralytics' ``optimizer=auto`` ignores ``lr0``/``momentum`` and picks
the optimizer by the planned number of iterations (with ``time=`` and ``epochs=1000``: MuSGD, lr 0.01, built with
momentum 0.9), then its warm-up ramps the momentum from ``warmup_momentum`` (0.8) to ``momentum`` (0.937), where it
stays (an Adam-type choice keeps its beta1 0.9). So the record is taken from what the run wrote, never from the
command line:

* Ultralytics: the ``optimizer: NAME(lr=..., momentum=...) with parameter groups ... weight(decay=...)`` line its
  trainer logs (into the contestant's ``train.log``, also with ``verbose=False``) and ``train/args.yaml``
  (plain YAML: ``momentum``, ``warmup_momentum``, ``warmup_epochs``, ``nbs``, ``batch``). Its ``last.pt`` is a
  pickle and is not read here.
* Ours: the run config saved in ``train/last.state.pt`` (``torch.load(weights_only=True)``).

Every record has ``name, lr, momentum, weight_decay, nominal_batch, batch`` (``momentum``: the value after
warm-up; AdamW's beta1; ``nominal_batch``: the batch the lr and decay are stated for, None when they are not
rescaled by batch) and ``source``; Ultralytics' also ``momentum_built`` and ``warmup_momentum``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cspwrc.engine.checkpoint import read_state
from cspwrc.errors import CheckpointError

__all__ = ["format_optimizer", "ours_optimizer", "parse_optimizer_line", "ultralytics_optimizer"]

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ultralytics colours its log prefixes, also when logging to a file
OPTIMIZER_LINE = re.compile(r"optimizer:\s+(?P<name>\w+)\(lr=(?P<lr>[^,]+), momentum=(?P<momentum>[^)]+)\) "
                            r"with parameter groups (?P<groups>.*)")
DECAY = re.compile(r"decay=([0-9.eE+-]+)")
MOMENTUM_WARMED = frozenset({"SGD", "MuSGD", "RMSprop"})  # Ultralytics' optimizers whose groups have "momentum"


def parse_optimizer_line(log: str) -> dict[str, Any] | None:
    """The last ``optimizer: NAME(lr=..., momentum=...) with parameter groups ...`` line of an Ultralytics log:
    ``{name, lr, momentum_built, weight_decay}`` (the decay of the decayed group, the largest one logged)."""
    found = None
    for line in ANSI.sub("", log).splitlines():
        match = OPTIMIZER_LINE.search(line)
        if match:
            found = match
    if found is None:
        return None
    decays = [float(d) for d in DECAY.findall(found["groups"])]
    return {"name": found["name"], "lr": float(found["lr"]), "momentum_built": float(found["momentum"]),
            "weight_decay": max(decays, default=None)}


def ultralytics_optimizer(out: Path) -> dict[str, Any] | None:
    """The optimizer record of an Ultralytics contestant's folder (``train.log``, ``train/args.yaml``); None when
    the run has not written them."""
    log, args_file = out / "train.log", out / "train" / "args.yaml"
    if not args_file.is_file():
        return None
    args = yaml.safe_load(args_file.read_text()) or {}
    used = parse_optimizer_line(log.read_text(errors="replace")) if log.is_file() else None
    if used is None:  # no log line: what was asked for, said so
        return {"name": args.get("optimizer"), "lr": args.get("lr0"), "momentum": args.get("momentum"),
                "weight_decay": args.get("weight_decay"), "nominal_batch": args.get("nbs"), "batch": args.get("batch"),
                "momentum_built": None, "warmup_momentum": args.get("warmup_momentum"),
                "source": "train/args.yaml (asked-for values: no optimizer line in train.log)"}
    # The warm-up moves the momentum of every group that has one (SGD, MuSGD, RMSprop; Adam-type optimizers keep
    # theirs as beta1, untouched) to args.momentum, and nothing moves it afterwards; without a warm-up it stays built.
    ramped = float(args.get("warmup_epochs") or 0) > 0 and used["name"] in MOMENTUM_WARMED
    return {"name": used["name"], "lr": used["lr"],
            "momentum": args.get("momentum") if ramped else used["momentum_built"],
            "weight_decay": used["weight_decay"], "nominal_batch": args.get("nbs"), "batch": args.get("batch"),
            "momentum_built": used["momentum_built"],
            "warmup_momentum": args.get("warmup_momentum") if ramped else None,
            "source": "train.log optimizer line + train/args.yaml"}


def ours_optimizer(train_dir: Path) -> dict[str, Any] | None:
    """The optimizer record of one of our runs, from the config saved in ``last.state.pt``; None without it."""
    try:
        config = read_state(train_dir / "last.state.pt").get("config")
    except CheckpointError:
        return None
    if not isinstance(config, dict) or "optim" not in config:
        return None
    optim, train = config["optim"], config.get("train", {})
    return {"name": optim.get("opt"), "lr": optim.get("lr"), "momentum": optim.get("momentum"),
            "weight_decay": optim.get("weight_decay"), "nominal_batch": None, "batch": train.get("batch"),
            "source": "train/last.state.pt config (lr and decay are not rescaled by batch)"}


def format_optimizer(record: dict[str, Any] | None) -> str:
    """One table cell: ``MuSGD lr 0.01 m 0.8→0.937 wd 0.0005 nbs 64`` / ``adamw lr 0.002 m 0.9 wd 0.05``."""
    if not record or not record.get("name"):
        return "–"
    momentum = f"{record['momentum']:g}" if record.get("momentum") is not None else "?"
    if record.get("warmup_momentum") is not None:
        momentum = f"{record['warmup_momentum']:g}→{momentum}"
    text = f"{record['name']} lr {record['lr']:g} m {momentum}"
    if record.get("weight_decay") is not None:
        text += f" wd {record['weight_decay']:g}"
    if record.get("nominal_batch"):
        text += f" nbs {record['nominal_batch']}"
    return text
