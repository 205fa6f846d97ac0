"""Embedded default data set: coloured geometric shapes on textured backgrounds, in COCO format.

Deterministic (image ``i`` of split ``s`` depends only on ``(seed, s, i)``), generated in a few seconds and
written atomically (temp folder + rename) to ``$CSPWRC_CACHE/shapes-v1`` (default ``~/.cache/cspwrc``).
Five classes (circle, square, triangle, star, cross), 1-5 objects of 28-100 px (up to 141 px rotated) per 256-320 px
image, random colours (colour does not give the class away), random rotation, at most a little overlap, on smooth
coloured noise with pixel noise and distractor lines. Boxes are the exact extent of each drawn shape.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cspwrc.data.cache import cache_root

VERSION = 1
CLASSES = ("circle", "square", "triangle", "star", "cross")
IMAGE_SIZES = ((256, 320), (320, 256), (288, 288), (256, 256), (320, 320))  # (height, width)
SPLITS = {"train": 0, "val": 1}


def _polygon(kind: str, size: float, angle: float) -> np.ndarray:
    """Unit-centred polygon of the shape, ``float [K, 2]``, longest extent about ``size``."""
    if kind == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.5
    elif kind == "triangle":
        t = np.deg2rad([90, 210, 330])
        pts = np.stack([np.cos(t), -np.sin(t)], axis=1) * 0.55
    elif kind == "star":
        t = np.deg2rad(np.arange(10) * 36 + 90)
        r = np.where(np.arange(10) % 2 == 0, 0.55, 0.23)
        pts = np.stack([np.cos(t) * r, -np.sin(t) * r], axis=1)
    else:  # cross: a plus sign of arm width 1/3
        a, b = 1 / 6, 0.5
        pts = np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a],
                        [-b, -a], [-a, -a]])
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) * size


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth coloured noise + pixel noise + a few thin distractor lines, ``uint8 [h, w, 3]``."""
    coarse = rng.uniform(40, 215, size=(rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img = img * 0.6 + rng.uniform(30, 90)  # muted so saturated objects stand out
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * 8
    for _ in range(rng.integers(0, 4)):
        p0, p1 = rng.integers(0, [w, h], size=2), rng.integers(0, [w, h], size=2)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour, 1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, kind: str, h: int, w: int, size: float, centre: np.ndarray) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    if kind == "circle":
        cv2.circle(mask, (int(centre[0]), int(centre[1])), int(size / 2), 1, -1, lineType=cv2.LINE_8)
    else:
        pts = _polygon(kind, size, rng.uniform(0, 2 * np.pi)) + centre
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(150, 256)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def make_image(seed: int, split: int, index: int, masks: list[np.ndarray] | None = None
               ) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One sample: ``(image uint8 [h, w, 3] RGB, [(class_index, [x, y, w, h]), ...])``.

    ``masks``, if given, receives each object's ``uint8 [h, w]`` mask (for tests of the box exactness).
    """
    rng = np.random.default_rng([seed, split, index])
    h, w = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    image = _background(rng, h, w).astype(np.float32)
    objects: list[tuple[int, list[float]]] = []
    for _ in range(rng.integers(1, 6) * 4):  # several placement tries per wanted object
        if len(objects) >= 5 or (objects and rng.uniform() < 0.2):
            break
        cls, size = int(rng.integers(len(CLASSES))), float(rng.uniform(28, 100))
        centre = rng.uniform([size / 2, size / 2], [w - size / 2, h - size / 2])
        mask = _shape_mask(rng, CLASSES[cls], h, w, size, centre)
        ys, xs = np.nonzero(mask)
        box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        if any(_iou(box, other) > 0.1 for _, other in objects):
            continue
        # a soft vertical shade makes the fill less flat without changing the object's extent
        x0, y0, x1, y1 = int(box[0]), int(box[1]), int(box[0] + box[2]), int(box[1] + box[3])
        shade = np.linspace(0.85, 1.1, y1 - y0, dtype=np.float32)[:, None, None]
        region = image[y0:y1, x0:x1]
        region[:] = np.where(mask[y0:y1, x0:x1, None] > 0, np.clip(_colour(rng) * shade, 0, 255), region)
        objects.append((cls, box))
        if masks is not None:
            masks.append(mask)
    return image.astype(np.uint8), objects


def _write_split(root: Path, name: str, count: int, seed: int) -> None:
    images, annotations = [], []
    (root / "images" / name).mkdir(parents=True)
    for i in range(count):
        image, objects = make_image(seed, SPLITS[name], i)
        file_name = f"{i:05d}.jpg"
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok, "OpenCV could not encode a JPEG"
        (root / "images" / name / file_name).write_bytes(buf.tobytes())
        images.append({"id": i + 1, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        for cls, box in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    data: dict[str, Any] = {"info": {"description": f"cspwrc shapes v{VERSION}", "version": VERSION},
                            "images": images, "annotations": annotations, "categories": categories}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(data))


def _yaml_text() -> str:
    names = ", ".join(CLASSES)
    return (f"# cspwrc embedded shapes data set v{VERSION} (generated by cspwrc.data.shapes)\n"
            "train: {ann: annotations/instances_train.json, images: images/train}\n"
            "val: {ann: annotations/instances_val.json, images: images/val}\n"
            f"names: [{names}]\n")


def generate_shapes(root: Path, num_train: int = 400, num_val: int = 100, seed: int = 0) -> Path:
    """Write the data set into the new folder ``root`` (must not exist); return the data YAML path."""
    root.mkdir(parents=True)
    _write_split(root, "train", num_train, seed)
    _write_split(root, "val", num_val, seed)
    (root / "shapes.yaml").write_text(_yaml_text())
    return root / "shapes.yaml"


def ensure_shapes_dataset(root: Path | None = None, *, num_train: int = 400, num_val: int = 100, seed: int = 0
                          ) -> Path:
    """Return the data YAML of the shapes data set, generating it atomically on first use.

    ``root`` defaults to ``$CSPWRC_CACHE/shapes-v1`` (non-default sizes/seed get their own folder).
    Concurrent callers are safe: each builds in a private temp folder and the first rename wins.
    """
    if root is None:
        suffix = "" if (num_train, num_val, seed) == (400, 100, 0) else f"-n{num_train}-{num_val}-s{seed}"
        root = cache_root() / f"shapes-v{VERSION}{suffix}"
    root = Path(root)
    yaml_path = root / "shapes.yaml"
    if yaml_path.is_file():
        return yaml_path
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate_shapes(tmp, num_train, num_val, seed)
        try:
            os.rename(tmp, root)  # atomic on one file system; fails if another process got there first
        except OSError:
            if not yaml_path.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return yaml_path
