"""Run configuration: a strict YAML schema (dataclasses with defaults) plus command-line overrides.

A run config is read with ``yaml.safe_load`` only, merged over the dataclass defaults, then the command
line is applied on top. Every problem is fatal and reported before training starts (docs/design.md's
failure policy): an unknown key names the file and suggests the nearest valid key, a wrong type names the
key, the expected type and the value.

The ``model:`` section is the detector's own :class:`cspwrc.det.DetectorConfig` (``model.backbone.name``,
``model.neck``, ``model.head``, ``model.loss.assigner``, ``model.post``, ``model.sync_bn``), built by the same
strict builder (:func:`cspwrc.validate.build_dataclass`). An old section ``model: {name, options: {flat}}`` (recipe
files and training states of earlier versions) is translated once, where a file's mapping comes in
(:func:`from_dict`, :func:`cspwrc.det.legacy.upgrade_model_section`); the command line takes only the nested keys.
``augment:`` is the data side's :class:`cspwrc.data.transforms.AugmentConfig`, stated where the pipeline is.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import yaml

from cspwrc.data.transforms import AugmentConfig
from cspwrc.det import DetectorConfig
from cspwrc.det.detector import check_backbone
from cspwrc.det.legacy import upgrade_model_section
from cspwrc.errors import ConfigError
from cspwrc.validate import Fault, build_dataclass, merge, require

# The defaults below ARE the real-data recipe (what `cspwrc train --data my.yaml` trains; configs/det/real.yaml adds
# nothing): from scratch on hundreds to tens of thousands of photographs, YOLOv8-style augmentation and schedule with
# the optimizer that worked best for this detector from scratch (docs/results.md §5-6 measure it on SHWD). Each value
# is stated once, here (the detector's in its part configs, cspwrc.det), with its reason; a recipe file is an overlay
# of what differs (configs/det/default.yaml: the embedded demo). Tune the real recipe here.


@dataclass
class RunDataConfig:
    """The run config's ``data:`` section (the data YAML it points to is :class:`cspwrc.data.config.DataConfig`)."""

    path: str | None = None  # data YAML (train/val annotation files and image dirs); None = embedded shapes
    # Loader processes (0: the main process). auto (data.loader.auto_workers): 2 on a CPU machine (the step needs the
    # other cores), CPUs - 1 (at most 8) per rank on CUDA.
    workers: int | Literal["auto"] = "auto"
    # ram: decode + resize each image once and keep it in memory (size-checked: beyond half the free memory it reads
    # from disk with a warning). Same samples as none; on SHWD at 320 on one core it fit 21 epochs in an hour
    # instead of 18 and scored 0.383 vs 0.348 mAP (docs/race/shwd_60min_v2/ARMS.md, arms C and E).
    cache: Literal["none", "ram"] = "ram"


@dataclass
class OptimConfig:
    # AdamW converges faster than SGD from scratch on schedules of up to ~10k steps (Ultralytics' `optimizer=auto`
    # makes the same choice); configs/det/sgd.yaml for long runs. musgd: SGD + Muon on conv weights (engine.optim).
    opt: Literal["sgd", "adamw", "musgd"] = "adamw"
    lr: float = 0.002  # base lr for the whole batch (not scaled by batch size); a safe AdamW lr from scratch with BN
    weight_decay: float = 0.05  # decoupled; conv/linear weights only (never norms, biases or WRC weights)
    momentum: float = 0.9  # AdamW beta1 (SGD momentum with opt sgd: YOLO's 0.937 in configs/det/sgd.yaml)
    betas2: float = 0.999  # AdamW beta2
    nominal_batch: int = 0  # >0: YOLO's nbs: accumulate to this many images, loss x batch, decay scaled (engine.optim)


@dataclass
class ScheduleConfig:
    sched: Literal["cosine", "linear"] = "cosine"  # smooth decay to min_lr_ratio * lr
    # YOLO's 3-epoch warmup: from-scratch BN statistics and mosaic make the first steps noisy (counted in optimizer
    # steps, fractions allowed).
    warmup_epochs: float = 3.0
    warmup_lr: float = 0.0  # lr at the first step of warmup for weights
    # YOLO's bias warmup (biases start high and decay to their lr), scaled for AdamW (0.1 is the SGD value).
    warmup_bias_lr: float = 0.01
    warmup_momentum: float | None = None  # YOLO's 0.8: momentum (Adam beta1) rises from this to optim.momentum
    min_lr_ratio: float = 0.01  # final lr = lr * min_lr_ratio (YOLO's lrf)


@dataclass
class EmaConfig:
    enabled: bool = True  # the EMA weights are evaluated and saved: they score better than the raw ones
    decay: float = 0.9999  # tens of thousands of steps; the warmup lets early EMA follow the model
    warmup: bool = True  # timm ModelEmaV3 warmup: decay grows with steps, so early EMA follows the model
    warmup_power: float = 0.75  # reaches ~0.999 after ~10k steps (timm/crowsonkb guidance for short runs)


@dataclass
class TrainConfig:
    epochs: int = 100  # or --time HOURS: the epochs are refitted to a wall-clock budget
    batch: int = 16  # per process
    img: int = 640  # square letterbox size, a multiple of 32; SHWD-like small objects need the pixels (320: CPU)
    close_mosaic: int = 10  # YOLOv8: mosaic off for the last N epochs, so the model finishes on whole images
    grad_clip: float = 10.0  # max global grad norm (guards the first from-scratch steps); 0 disables clipping
    nan_policy: Literal["stop", "skip"] = "stop"  # non-finite loss: stop the run, or skip the step and count
    max_nan_skips: int = 100  # with nan_policy skip: stop anyway after this many skipped steps
    amp: bool | Literal["auto", "bf16", "fp16", "off"] = "auto"  # CUDA only; auto (= true): bf16 where supported
    # NHWC model and batches: tensor-core convs on CUDA; on CPU oneDNN's depthwise convs (the "dw" head) run ~1.5x
    # faster in NHWC, dense convs about the same (tools/profile_step.py)
    channels_last: bool = True
    eval_interval: int = 1  # evaluate every N epochs (and always after the last one)
    patience: int = 0  # >0: stop when val mAP has not improved for this many epochs (checked when evaluated)
    tensorboard: bool = True  # TensorBoard scalars in OUT/tb when the package is installed (extra [tb])
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    out: str = "runs/det"  # run directory
    weights: str | None = None  # initialise from a local checkpoint (cspwrc safetensors or backbone-only)
    max_steps_per_epoch: int = 0  # >0: cut each epoch short (smoke tests, quick looks)
    time: float | None = None  # hours of training (Ultralytics' `time`): refits `epochs` to the budget after each epoch


@dataclass
class RunConfig:
    """A training run. Its defaults are the real-data recipe (see the comment above :class:`RunDataConfig`)."""

    model: DetectorConfig = field(default_factory=DetectorConfig)  # the detector (backbone, neck, head, loss, ...)
    data: RunDataConfig = field(default_factory=RunDataConfig)
    # YOLOv8's mosaic, affine, HSV and flip (stated beside the pipeline: cspwrc.data.transforms)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON friendly, loadable with torch.load(weights_only=True))."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any], source: str = "<config>") -> RunConfig:
    """The run config a nested mapping describes (a YAML file, a saved state), strictly: an unknown key names the
    nearest valid one, a wrong type or range names the dotted key. An old ``model: {name, options}`` section is
    translated to the nested one first (:func:`cspwrc.det.legacy.upgrade_model_section`)."""
    try:
        if isinstance(data, dict) and "model" in data:
            data = {**data, "model": upgrade_model_section(data["model"])}
        return build_dataclass(RunConfig, data)
    except (Fault, ConfigError) as fault:
        raise ConfigError(f"{source}: {fault}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (never a loader that can build Python objects)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` in a nested dict, creating sections as needed (validated later)."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"command line: --set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (or the defaults when ``path`` is None), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    cfg = from_dict(data, str(path) if path is not None else "<defaults>")
    if overrides:
        cfg = from_dict(merge(to_dict(cfg), overrides), "command line")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Value checks that the types alone do not catch, then the model build probe (fatal, before training and before
    any image is read: config -> model -> data). The detector's own ranges are checked by its part configs."""
    t = cfg.train
    require(t.img > 0 and t.img % 32 == 0, "train.img", "a positive multiple of 32 (the detector's largest stride)",
            t.img)
    for key in ("epochs", "batch", "eval_interval"):
        require(getattr(t, key) >= 1, f"train.{key}", ">= 1", getattr(t, key))
    require(t.patience >= 0, "train.patience", ">= 0 (0 = no early stopping)", t.patience)
    require(t.close_mosaic >= 0, "train.close_mosaic", ">= 0", t.close_mosaic)
    require(t.time is None or t.time > 0, "train.time", "> 0 hours", t.time)
    require(cfg.data.workers == "auto" or cfg.data.workers >= 0, "data.workers", ">= 0 or auto", cfg.data.workers)
    require(cfg.optim.lr > 0, "optim.lr", "> 0", cfg.optim.lr)
    require(cfg.optim.nominal_batch >= 0, "optim.nominal_batch", ">= 0 (0 = one step per batch)",
            cfg.optim.nominal_batch)
    require(0.0 <= cfg.ema.decay < 1.0, "ema.decay", "in [0, 1)", cfg.ema.decay)
    check_model_name(cfg.model.backbone.name)
    try:  # the model build probe (meta device: no memory, no weights, no download)
        check_backbone(cfg.model.backbone)
    except ConfigError as err:
        raise ConfigError(f"model.{err}") from None


def check_model_name(name: str) -> None:
    """An unknown timm model name is fatal; list the closest registered names (the ``cspwrc_*`` models are
    registered: importing this module ran ``cspwrc/__init__``)."""
    if name in timm.list_models():
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigError(f"model.backbone.name: unknown model {name!r}{hint}")
