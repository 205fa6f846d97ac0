"""Data YAML: which annotation files and image folders to train and validate on, and which subset.

```yaml
train: {ann: annotations/instances_train.json, images: images, num_images: 100, seed: 0}
val:   {ann: annotations/instances_val.json, images: images}
names: [person, car]          # optional: expected class names in label order (checked)
categories: [person, car]     # optional: category names or COCO ids to keep (both splits)
```

An Ultralytics-style file (``train``/``val`` are strings) reads YOLO txt labels, or Pascal VOC XML with
``format: voc`` (see :mod:`cspwrc.data.formats`, ``docs/data.md``)::

    path: ../datasets/coco128   # root; relative to the YAML's folder (default: that folder)
    train: images               # yolo: image folder or list file under path; voc: ImageSets/Main/<train>.txt
    val: images
    names: {0: person, 1: bicycle}   # or a list; required
    format: yolo                # or voc; `test`, `nc` (checked) and `download` (never run) are accepted too

Relative paths resolve against the YAML's folder; ``yaml.safe_load`` only; unknown keys and wrong types
are fatal :class:`~cspwrc.data.checks.DataError`\\ s naming the file and key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cspwrc.data.checks import CheckReport, DataError, check_keys, check_type
from cspwrc.data.coco import CocoDetection
from cspwrc.data.formats import FORMATS, verify_split
from cspwrc.data.transforms import AugmentConfig

TOP_KEYS = ("train", "val", "names", "categories")
SPLIT_KEYS = ("ann", "images", "num_images", "image_ids", "seed")
ULTRALYTICS_KEYS = ("path", "train", "val", "test", "names", "nc", "download", "format", "categories")


@dataclass(frozen=True)
class SplitSpec:
    """One split: annotation file, image folder and subset options.

    ``format`` ``"yolo"``: ``ann`` is the split's image folder or list file, ``images`` the data root;
    ``"voc"``: ``ann`` is the ``ImageSets/Main/*.txt`` file, ``images`` the root holding ``Annotations/``.
    """

    ann: Path
    images: Path
    num_images: int | None = None
    image_ids: tuple[int, ...] | None = None
    seed: int = 0
    format: str = "coco"


@dataclass(frozen=True)
class DataConfig:
    """A parsed data YAML (``file`` is where it came from, for error messages)."""

    file: Path
    train: SplitSpec
    val: SplitSpec
    names: tuple[str, ...] | None = None
    categories: tuple[str | int, ...] | None = None


def _list_of(value: Any, types: type | tuple[type, ...], file: Path, key: str) -> tuple[Any, ...]:
    check_type(value, list, file, key)
    return tuple(check_type(v, types, file, f"{key}[{i}]") for i, v in enumerate(value))


def _split(raw: Any, file: Path, key: str) -> SplitSpec:
    check_type(raw, dict, file, key)
    check_keys(raw, SPLIT_KEYS, file, key)
    for required in ("ann", "images"):
        if required not in raw:
            raise DataError(file, key, f"missing key {required!r}")
    ann, images = (Path(check_type(raw[k], str, file, f"{key}.{k}")) for k in ("ann", "images"))
    num = raw.get("num_images")
    if num is not None and check_type(num, int, file, f"{key}.num_images") <= 0:
        raise DataError(file, f"{key}.num_images", f"must be positive, got {num}")
    ids = raw.get("image_ids")
    return SplitSpec(ann=file.parent / ann, images=file.parent / images, num_images=num,
                     image_ids=None if ids is None else _list_of(ids, int, file, f"{key}.image_ids"),
                     seed=check_type(raw.get("seed", 0), int, file, f"{key}.seed"))


def _names(raw: Any, file: Path) -> tuple[str, ...]:
    """Ultralytics ``names``: a list, or a dict ``{0: name, 1: name, ...}`` with keys ``0..n-1``."""
    if isinstance(raw, dict):
        if sorted(raw) != list(range(len(raw))):
            raise DataError(file, "names",
                            f"dict keys must be the class indices 0..{len(raw) - 1}, got {list(raw)[:10]}")
        return tuple(check_type(raw[i], str, file, f"names[{i}]") for i in range(len(raw)))
    return _list_of(raw, str, file, "names")


def _ultralytics(raw: dict[str, Any], file: Path) -> DataConfig:
    """An Ultralytics-style data file (see the module doc) as a :class:`DataConfig` of format yolo or voc."""
    check_keys(raw, ULTRALYTICS_KEYS, file, "top level")
    fmt = check_type(raw.get("format", "yolo"), str, file, "format")
    if fmt not in FORMATS[1:]:
        raise DataError(file, "format", f"{fmt!r} is not one of yolo, voc (COCO files use train: {{ann, images}})")
    for required in ("train", "val", "names"):
        if required not in raw:
            raise DataError(file, "top level", f"missing key {required!r}")
    names = _names(raw["names"], file)
    if "nc" in raw and check_type(raw["nc"], int, file, "nc") != len(names):
        raise DataError(file, "nc", f"nc {raw['nc']} differs from the {len(names)} names")
    root = file.parent / check_type(raw.get("path", "."), str, file, "path")

    def split(key: str) -> SplitSpec:
        value = check_type(raw[key], str, file, key)
        if fmt == "voc" and not value.endswith(".txt"):
            value = f"ImageSets/Main/{value}.txt"
        return SplitSpec(ann=root / value, images=root, format=fmt)

    cats = raw.get("categories")
    return DataConfig(file=file, train=split("train"), val=split("val"), names=names,
                      categories=None if cats is None else _list_of(cats, (str, int), file, "categories"))


def load_data_config(path: str | os.PathLike[str]) -> DataConfig:
    """Parse and validate a data YAML; fatal problems raise :class:`DataError`."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except OSError as e:
        raise DataError(file, "file", f"cannot read data YAML: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise DataError(file, "file", f"malformed YAML: {e}") from e
    check_type(raw, dict, file, "top level")
    if "format" in raw or "path" in raw or isinstance(raw.get("train"), str):
        return _ultralytics(raw, file)
    check_keys(raw, TOP_KEYS, file, "top level")
    for required in ("train", "val"):
        if required not in raw:
            raise DataError(file, "top level", f"missing key {required!r}")
    names = raw.get("names")
    cats = raw.get("categories")
    return DataConfig(file=file, train=_split(raw["train"], file, "train"), val=_split(raw["val"], file, "val"),
                      names=None if names is None else _list_of(names, str, file, "names"),
                      categories=None if cats is None else _list_of(cats, (str, int), file, "categories"))


def build_datasets(config: DataConfig | str | os.PathLike[str], *, img: int = 640,
                   augment: AugmentConfig | Mapping[str, Any] | None = None, seed: int = 0,
                   progress: bool = True, cache: str = "none") -> tuple[CocoDetection, CocoDetection]:
    """Train (augmented) and val (letterbox only) datasets of a data config; val uses train's label map.

    ``cache="ram"`` keeps both splits' letterboxed images in memory (see :class:`CocoDetection`)."""
    cfg = config if isinstance(config, DataConfig) else load_data_config(config)
    common: dict[str, Any] = {"img": img, "progress": progress, "cache": cache}
    train = CocoDetection(cfg.train.ann, cfg.train.images, train=True, augment=augment, seed=seed,
                          categories=cfg.categories, num_images=cfg.train.num_images,
                          image_ids=cfg.train.image_ids, subset_seed=cfg.train.seed,
                          report=split_report(cfg, cfg.train, progress), **common)
    if cfg.names is not None and tuple(train.class_names) != cfg.names:
        raise DataError(cfg.file, "names", f"{list(cfg.names)} differ from the annotation file's {train.class_names}")
    val = CocoDetection(cfg.val.ann, cfg.val.images, train=False, categories=train.label_to_category_id,
                        num_images=cfg.val.num_images, image_ids=cfg.val.image_ids, subset_seed=cfg.val.seed,
                        report=split_report(cfg, cfg.val, progress), **common)
    if val.class_names != train.class_names:
        raise DataError(cfg.val.ann, "categories", f"names {val.class_names} differ from train's {train.class_names}")
    return train, val


def split_report(cfg: DataConfig, split: SplitSpec, progress: bool = True) -> CheckReport | None:
    """The checked YOLO/VOC split as a :class:`CheckReport`; ``None`` for COCO (``CocoDetection`` reads the file)."""
    if split.format == "coco":
        return None
    return verify_split(split.format, split.ann, split.images, cfg.names or (), progress=progress)
