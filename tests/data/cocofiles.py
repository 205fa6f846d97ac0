"""Helpers of the data tests: tiny COCO-format files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_coco(root: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]],
               categories: list[dict[str, Any]], write_files: bool = True) -> tuple[Path, Path]:
    """Write ``instances.json`` and (by default) a plain grey-noise JPEG per image record of its JSON size.

    Returns ``(ann_file, image_dir)``.
    """
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for rec in images if write_files else []:
        pixels = rng.integers(60, 200, size=(rec["height"], rec["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / rec["file_name"])
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file, image_dir


def image_rec(i: int, w: int = 64, h: int = 48) -> dict[str, Any]:
    return {"id": i, "file_name": f"{i:03d}.jpg", "width": w, "height": h}


def ann_rec(i: int, image_id: int, cat: int, bbox: list[float], crowd: int = 0) -> dict[str, Any]:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3],
            "iscrowd": crowd}


