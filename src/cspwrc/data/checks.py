"""Data verification and the failure policy of cspwrc -- the one place it lives.

Policy
------
* **Fatal** (raise :class:`DataError` before training starts; the message names file, record and fault):
  unreadable or malformed JSON/YAML, missing keys, wrong types, unknown config keys, duplicate image /
  annotation / category ids, an image ``file_name`` that escapes the image directory (absolute path or
  ``..``), an image set that is empty after the checks.
* **Per-sample** (skipped, counted in :attr:`CheckReport.counts`, listed in :attr:`CheckReport.skipped`,
  logged, reported in the final summary): image missing / empty / corrupt or truncated / not an image /
  unreadable; JSON width/height that matches neither the stored nor the EXIF-corrected frame; boxes that
  are non-finite, of zero or negative size or wholly outside the image; annotations for unknown image or
  category ids.
* **Fixed silently but counted**: boxes partly outside the image are clipped (``counts["bbox clipped"]``);
  grayscale / RGBA / palette / 16-bit / CMYK images are converted to RGB; images without annotations are
  kept as background.
* **Read-time**: a file that breaks after the check raises :class:`SampleReadError` in
  :func:`cspwrc.data.image_io.load_image`; the dataset substitutes another sample and marks the target (see
  ``docs/data.md``).

Decoding and the reasons a file cannot be read are :mod:`cspwrc.data.image_io`'s; the probe results are cached
per image folder by :mod:`cspwrc.data.cache`. This module decides what each finding means.

EXIF orientation: the annotation frame is the one whose size equals the JSON ``width``/``height``. When
that is the EXIF-corrected frame (also when both frames have the same size, e.g. a 180 degree rotation),
the image is loaded with ``ImageOps.exif_transpose`` -- what detectron2, ``cv2.imread`` and Ultralytics do.
When the JSON matches only the stored (raw) frame, the annotations were made on the raw pixels and the
orientation tag is ignored, so boxes and pixels agree either way.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from cspwrc import validate
from cspwrc.data.cache import probe_images
from cspwrc.data.image_io import ImageEntry, oriented_size
from cspwrc.errors import DataError, SampleReadError, shorten  # DataError, SampleReadError: re-exported (old home)

log = logging.getLogger("cspwrc.data")

_IMAGE_FIELDS: dict[str, type | tuple[type, ...]] = {"id": int, "file_name": str, "width": int, "height": int}
_ANN_FIELDS: dict[str, type | tuple[type, ...]] = {"id": int, "image_id": int, "category_id": int, "bbox": list}
_CAT_FIELDS: dict[str, type | tuple[type, ...]] = {"id": int, "name": str}


def read_error_message(err: SampleReadError) -> str:
    """``err``'s own one-line message, also when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process from one string (``ExceptionWrapper.reraise``):
    ``SampleReadError("Caught SampleReadError in DataLoader worker process 0.\nOriginal Traceback ...")``, the
    worker's whole traceback, whose last ``cspwrc.errors.SampleReadError: `` line is the message.
    """
    text = str(err)
    marker = f"{SampleReadError.__module__}.{SampleReadError.__qualname__}: "
    cut = text.rfind(marker)
    return (text[cut + len(marker):] if cut >= 0 else text).strip()


@dataclass(frozen=True)
class Problem:
    """One skipped record: which file, which record, what was wrong."""

    file: str
    record: str
    fault: str

    def __str__(self) -> str:
        return f"{shorten(self.file)}: {shorten(self.record)}: {shorten(self.fault, 300)}"


@dataclass
class CheckReport:
    """Result of :func:`verify_coco`.

    ``boxes[image_id]`` is ``float32 [N, 4]`` xyxy in the annotation frame (clipped, finite, non-crowd),
    ``box_categories[image_id]`` is ``int64 [N]`` COCO category ids. ``gt_annotations`` holds the kept
    COCO records (crowd included, bbox clipped, ``area``/``iscrowd`` filled in) for COCOeval.
    """

    ann_file: Path
    image_dir: Path
    images: dict[int, ImageEntry]
    categories: list[dict[str, Any]]
    boxes: dict[int, np.ndarray]
    box_categories: dict[int, np.ndarray]
    gt_annotations: list[dict[str, Any]]
    skipped: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def skip(self, file: str, record: str, fault: str, kind: str) -> None:
        """Record a per-sample problem of the given kind."""
        self.skipped.append(Problem(file, record, fault))
        self.counts[kind] += 1

    def summary(self) -> str:
        """One line per count, for the log and the run's final summary."""
        head = f"{self.ann_file}: {len(self.images)} images usable, {len(self.skipped)} records skipped"
        return "\n".join([head] + [f"  {kind}: {n}" for kind, n in sorted(self.counts.items())])


# ----------------------------------------------------------------------------------------------- config keys
def check_keys(mapping: Mapping[str, Any], allowed: Iterable[str], file: str | os.PathLike[str], where: str) -> None:
    """Raise :class:`DataError` for the first unknown key, suggesting the nearest valid key."""
    try:
        validate.check_keys(mapping, allowed)
    except validate.Fault as fault:
        raise DataError(file, where, str(fault)) from None


def check_type(value: Any, expected: type | tuple[type, ...], file: str | os.PathLike[str], where: str) -> Any:
    """Return ``value`` if it has the expected type (bool is not an int here), else raise :class:`DataError`."""
    try:
        validate.check_value(value, expected)
    except validate.Fault as fault:
        raise DataError(file, where, str(fault)) from None
    return value


# ------------------------------------------------------------------------------------------------ JSON schema
def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a COCO instances file; fatal on unreadable, malformed or wrongly-shaped JSON."""
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise DataError(path, "file", f"cannot read annotation file: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else "bytes"
        raise DataError(path, where, f"malformed JSON: {e}") from e
    check_type(data, dict, path, "top level")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(path, "top level", f"missing key {key!r}")
        check_type(data[key], list, path, key)
    return data


def _check_records(records: list[Any], spec: Mapping[str, Any], file: Path, section: str) -> None:
    """Every record is a dict with the required keys of the right types; ids are unique. Then the section's own
    checks, once every record has its keys: annotation boxes, image sizes."""
    seen: dict[int, int] = {}
    for i, rec in enumerate(records):
        where = f"{section}[{i}]"
        check_type(rec, dict, file, where)
        if "id" in rec:
            where = f"{section}[{i}] (id={rec['id']!r})"
        for key, typ in spec.items():
            if key not in rec:
                raise DataError(file, where, f"missing key {key!r}")
            check_type(rec[key], typ, file, f"{where}.{key}")
        if rec["id"] in seen:
            raise DataError(file, where, f"duplicate id {rec['id']} (first at {section}[{seen[rec['id']]}])")
        seen[rec["id"]] = i
    if section == "annotations":
        _check_annotation_values(records, file)
    if section == "images":
        _check_image_sizes(records, file)


def _check_annotation_values(records: list[dict[str, Any]], file: Path) -> None:
    for i, rec in enumerate(records):
        _check_bbox_shape(rec, file, f"annotations[{i}] (id={rec['id']})")
        if "iscrowd" in rec:
            check_type(rec["iscrowd"], int, file, f"annotations[{i}] (id={rec['id']}).iscrowd")


def _check_image_sizes(records: list[dict[str, Any]], file: Path) -> None:
    for i, rec in enumerate(records):
        if rec["width"] <= 0 or rec["height"] <= 0:
            raise DataError(file, f"images[{i}] (id={rec['id']})", "width and height must be positive")


def _check_bbox_shape(rec: dict[str, Any], file: Path, where: str) -> None:
    bbox = rec["bbox"]
    if len(bbox) != 4:
        raise DataError(file, f"{where}.bbox", f"expected 4 numbers [x, y, w, h], got {len(bbox)}")
    for v in bbox:
        check_type(v, (int, float), file, f"{where}.bbox")


def safe_image_path(image_dir: Path, file_name: str, ann_file: Path, record: str) -> Path:
    """Join ``file_name`` to ``image_dir``; fatal if it is empty, absolute or climbs out with ``..``."""
    posix, windows = PurePosixPath(file_name), PureWindowsPath(file_name)
    if not file_name or posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        raise DataError(ann_file, record, f"file_name {file_name!r} is absolute or empty; it must be relative")
    if ".." in posix.parts or ".." in windows.parts:
        raise DataError(ann_file, record, f"file_name {file_name!r} escapes the image directory with '..'")
    return image_dir / posix


# ------------------------------------------------------------------------------------------------ the checks
def _error_kind(reason: str) -> str:
    for kind in ("missing", "empty", "permission", "not an image"):
        if kind in reason:
            return f"image {kind}"
    return "image corrupt"


def _frame(probe: dict[str, Any], json_wh: tuple[int, int]) -> tuple[bool, str | None]:
    """Pick the annotation frame (see module doc): returns ``(exif_transpose, error)``."""
    raw_w, raw_h = probe["raw"]
    corrected = oriented_size(probe)
    if json_wh == corrected:
        return True, None
    if json_wh == (raw_w, raw_h):
        return False, None
    return False, f"JSON size {json_wh[0]}x{json_wh[1]} differs from the file's {corrected[0]}x{corrected[1]}"


def _verify_images(data: dict[str, Any], ann_file: Path, image_dir: Path, report: CheckReport, progress: bool,
                   use_cache: bool) -> None:
    paths = {}
    for i, rec in enumerate(data["images"]):
        paths[rec["file_name"]] = safe_image_path(image_dir, rec["file_name"], ann_file,
                                                  f"images[{i}] (id={rec['id']})")
    probes = probe_images(paths, image_dir, progress, use_cache)
    for rec in data["images"]:
        name, record = rec["file_name"], f"image id={rec['id']}"
        probe = probes[name]
        if "error" in probe:
            report.skip(name, record, probe["error"], _error_kind(probe["error"]))
            continue
        exif, err = _frame(probe, (rec["width"], rec["height"]))
        if err:
            report.skip(name, record, err, "image size differs from JSON")
            continue
        report.images[rec["id"]] = ImageEntry(rec["id"], name, paths[name], rec["height"], rec["width"], exif)


def _clean_box(ann: dict[str, Any], image: ImageEntry, report: CheckReport, ann_file: str) -> list[float] | None:
    """Return the clipped ``[x, y, w, h]`` or ``None`` (skipped and counted)."""
    x, y, w, h = (float(v) for v in ann["bbox"])
    record = f"annotation id={ann['id']} (image id={ann['image_id']})"
    ann_file = ann.get("source", ann_file)  # YOLO/VOC readers name the label file and line (data/formats.py)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        report.skip(ann_file, record, f"non-finite bbox {ann['bbox']}", "bbox non-finite")
        return None
    if w <= 0 or h <= 0:
        report.skip(ann_file, record, f"bbox of zero or negative size {ann['bbox']}", "bbox degenerate")
        return None
    x0, y0 = min(max(x, 0.0), image.width), min(max(y, 0.0), image.height)
    x1, y1 = min(max(x + w, 0.0), image.width), min(max(y + h, 0.0), image.height)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        report.skip(ann_file, record, f"bbox {ann['bbox']} wholly outside the {image.width}x{image.height} image",
                    "bbox outside image")
        return None
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        report.counts["bbox clipped"] += 1
    return [x0, y0, x1 - x0, y1 - y0]


def _verify_annotations(data: dict[str, Any], ann_file: Path, report: CheckReport) -> None:
    known_images = {rec["id"] for rec in data["images"]}
    known_cats = {c["id"] for c in data["categories"]}
    per_image: dict[int, list[tuple[list[float], int]]] = {i: [] for i in report.images}
    for ann in data["annotations"]:
        record, file = f"annotation id={ann['id']}", str(ann.get("source", ann_file))
        if ann["image_id"] not in known_images:
            report.skip(file, record, f"unknown image id {ann['image_id']}", "annotation unknown image")
            continue
        if ann["category_id"] not in known_cats:
            report.skip(file, record, f"unknown category id {ann['category_id']}",
                        "annotation unknown category")
            continue
        image = report.images.get(ann["image_id"])
        if image is None:
            report.counts["annotations of skipped images"] += 1
            continue
        box = _clean_box(ann, image, report, str(ann_file))
        if box is None:
            continue
        crowd = int(ann.get("iscrowd", 0))
        area = float(ann.get("area", box[2] * box[3]))
        report.gt_annotations.append({**ann, "bbox": box, "iscrowd": crowd, "area": area})
        if crowd:
            report.counts["crowd boxes (eval only)"] += 1  # ignored in training, COCOeval handles them
        else:
            per_image[image.id].append((box, ann["category_id"]))
    for image_id, items in per_image.items():
        xywh = np.asarray([b for b, _ in items], dtype=np.float32).reshape(-1, 4)
        report.boxes[image_id] = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        report.box_categories[image_id] = np.asarray([c for _, c in items], dtype=np.int64)


def verify_coco(ann_file: str | os.PathLike[str], image_dir: str | os.PathLike[str], *, progress: bool = True,
                use_cache: bool = True, data: dict[str, Any] | None = None) -> CheckReport:
    """Check a COCO instances file and its images up front; fatal problems raise :class:`DataError`.

    ``data``: an in-memory COCO dict to check instead of reading ``ann_file`` (which then only names it in
    messages; the YOLO and VOC readers of :mod:`cspwrc.data.formats` pass theirs). Returns a
    :class:`CheckReport` with the usable images, cleaned boxes and the per-sample problems.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    data = load_json(ann_file) if data is None else data
    _check_records(data["images"], _IMAGE_FIELDS, ann_file, "images")
    _check_records(data["annotations"], _ANN_FIELDS, ann_file, "annotations")
    _check_records(data["categories"], _CAT_FIELDS, ann_file, "categories")
    if not image_dir.is_dir():
        raise DataError(image_dir, "images", "image directory not found")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    report = CheckReport(ann_file, image_dir, {}, categories, {}, {}, [])
    _verify_images(data, ann_file, image_dir, report, progress, use_cache)
    _verify_annotations(data, ann_file, report)
    if not report.images:
        raise DataError(ann_file, "images", f"no usable images ({len(report.skipped)} skipped: "
                        f"{report.skipped[0] if report.skipped else 'the file lists none'})")
    if report.skipped:
        log.warning("%s", report.summary())
        for problem in report.skipped[:10]:
            log.warning("skipped %s", problem)
    return report
