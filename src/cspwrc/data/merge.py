"""Merge COCO instances files that share one category list (e.g. train + val into one "all" file).

Used for the standard memorisation check (train and evaluate on all images of a small set) and for users
who keep their data in several files. Image and annotation ids must already be unique across the files:
renumbering would break the link to the original COCO ids that evaluation relies on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cspwrc.atomic import write_json
from cspwrc.data.checks import DataError, load_json

__all__ = ["merge_coco"]


def _check_unique(files: Sequence[Path], datas: Sequence[dict[str, Any]], section: str) -> None:
    owner: dict[Any, Path] = {}
    for file, data in zip(files, datas, strict=True):
        for rec in data[section]:
            if rec["id"] in owner:
                raise DataError(file, f"{section} id={rec['id']}", f"id also used in {owner[rec['id']]}")
            owner[rec["id"]] = file


def merge_coco(ann_files: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Write one instances JSON holding the images and annotations of all ``ann_files``.

    The category lists must be identical (same ids and names); the first file's ``info``/``licenses`` are kept.
    Returns the written path. Fatal :class:`DataError` on differing categories or ids used twice.
    """
    files = [Path(f) for f in ann_files]
    if not files:
        raise ValueError("merge_coco needs at least one annotation file")
    datas = [load_json(f) for f in files]
    for file, data in zip(files[1:], datas[1:], strict=True):
        if data["categories"] != datas[0]["categories"]:
            raise DataError(file, "categories", f"differ from the categories of {files[0]}")
    for section in ("images", "annotations"):
        _check_unique(files, datas, section)
    merged = {k: v for k, v in datas[0].items() if k not in ("images", "annotations")}
    merged["images"] = [rec for data in datas for rec in data["images"]]
    merged["annotations"] = [rec for data in datas for rec in data["annotations"]]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, merged, indent=None)
    return out
