"""Ultralytics (YOLO txt) and Pascal VOC (XML) splits read as in-memory COCO dicts.

Each reader turns one split into the dict a COCO instances file would hold and hands it to
:func:`~cspwrc.data.checks.verify_coco`, so every check and the skip policy of ``checks.py`` apply unchanged.
What only these formats can get wrong is decided here, by the same rule as for COCO JSON:

* **Fatal** (:class:`DataError` naming file and line): a label line that is not ``class cx cy w h`` (or a
  ``class x1 y1 x2 y2 ...`` polygon) of numbers, a non-integer class; malformed XML, an XML without
  ``<size>`` or an ``<object>`` without ``<name>``/``<bndbox>``; a VOC id without its XML; an image folder or
  list without images, an image path with no ``images`` folder to map to ``labels``.
* **Skipped and counted** (by ``verify_coco``; the annotation's ``source`` names ``file:line``): class
  index out of range / unknown VOC class name (``annotation unknown category``), boxes of zero size, non-finite
  or outside the image; unreadable images (their size is unknown, so they get a 1x1 record the probe rejects).
* An image without a label file (YOLO) or without objects is a background image.

YOLO boxes are normalised to the EXIF-corrected image size (as Ultralytics does); VOC boxes are 1-based
inclusive pixel indices, so ``xmin - 1, ymin - 1, xmax, ymax`` is the continuous box (as detectron2 reads them).
VOC ``difficult`` objects become ``iscrowd: 1``: ignored in training, neither hit nor miss in COCOeval.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cspwrc.data.cache import probe_images
from cspwrc.data.checks import CheckReport, DataError, verify_coco
from cspwrc.data.image_io import oriented_size

IMAGE_SUFFIXES = (".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp")
FORMATS = ("coco", "yolo", "voc")


def _image_ids(stems: Sequence[str]) -> list[int]:
    """COCO ids for images: the stems themselves when all are distinct integers (COCO's own file names), else 1..N."""
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(stems) + 1))


def _categories(names: Sequence[str]) -> list[dict[str, Any]]:
    # Category id = class index, as Ultralytics' non-COCO JSON export does.
    return [{"id": i, "name": n} for i, n in enumerate(names)]


# ------------------------------------------------------------------------------------------------ YOLO
def yolo_image_paths(source: Path) -> list[Path]:
    """The images of a YOLO split: every image file under a folder (sorted), or the lines of a list file
    (relative lines resolve against the list file's folder)."""
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.is_file():
        try:
            lines = source.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(source, "file", f"cannot read image list: {e}") from e
        # normpath: "../images/a.jpg" lines become plain paths, so names relative to their common folder have no "..".
        paths = [Path(os.path.normpath(source.parent / line.strip())) for line in lines if line.strip()]
    else:
        raise DataError(source, "images", "image folder or list file not found")
    if not paths:
        raise DataError(source, "images", f"no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return paths


def yolo_label_path(image: Path) -> Path:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the last ``images`` folder), as Ultralytics maps them."""
    parts = image.parts
    if "images" not in parts[:-1]:
        raise DataError(image, "labels", "the image path has no 'images' folder to map to its 'labels' folder")
    i = len(parts) - 2 - parts[:-1][::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")


def _parse_yolo_line(line: str, file: Path, lineno: int) -> tuple[int, list[float]]:
    """``class cx cy w h`` (or a polygon ``class x1 y1 ...``) -> ``(class, [cx, cy, w, h])``, normalised."""
    fields = line.split()
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise DataError(file, f"line {lineno}",
                        f"expected numbers 'class cx cy w h', got {line.strip()!r:.80}") from None
    if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
        raise DataError(file, f"line {lineno}", f"expected 'class cx cy w h' (5 numbers) or a polygon "
                        f"'class x1 y1 x2 y2 x3 y3 ...', got {len(values)} numbers")
    if not values[0].is_integer():
        raise DataError(file, f"line {lineno}", f"class {fields[0]!r} is not an integer")
    if len(values) == 5:
        return int(values[0]), values[1:]
    xs, ys = values[1::2], values[2::2]  # a segment: its bounding box, as Ultralytics trains on it
    return int(values[0]), [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]


def yolo_to_coco(source: Path, names: Sequence[str], *, progress: bool = True, use_cache: bool = True
                 ) -> tuple[dict[str, Any], Path]:
    """A YOLO split (image folder or list file) as ``(COCO dict, image_dir)``; see the module doc for policy."""
    paths = yolo_image_paths(source)
    image_dir = Path(os.path.commonpath([p.parent for p in paths]))
    file_names = [p.relative_to(image_dir).as_posix() for p in paths]
    probes = probe_images(dict(zip(file_names, paths, strict=True)), image_dir, progress, use_cache)
    images, annotations = [], []
    for image_id, name, path in zip(_image_ids([p.stem for p in paths]), file_names, paths, strict=True):
        width, height = oriented_size(probes[name]) if "error" not in probes[name] else (1, 1)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        label_file = yolo_label_path(path)
        try:
            lines = label_file.read_text().splitlines()
        except FileNotFoundError:
            continue  # no label file: a background image, as in Ultralytics
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(label_file, "file", f"cannot read label file: {e}") from e
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            cls, (cx, cy, w, h) = _parse_yolo_line(line, label_file, lineno)
            bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls, "bbox": bbox,
                                "area": bbox[2] * bbox[3] if all(map(math.isfinite, bbox)) else 0.0, "iscrowd": 0,
                                "source": f"{label_file}:{lineno}"})
    return {"images": images, "annotations": annotations, "categories": _categories(names)}, image_dir


# ------------------------------------------------------------------------------------------------ VOC
def voc_ids(image_set: Path) -> list[str]:
    """The image ids of ``ImageSets/Main/<set>.txt`` (first word of each line; class lists add a flag)."""
    try:
        return [line.split()[0] for line in image_set.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(image_set, "file", f"cannot read image set: {e}") from e


def _xml_text(node: ET.Element, tag: str, file: Path, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(file, where, f"missing <{tag}>")
    return child.text.strip()


def _xml_number(node: ET.Element, tag: str, file: Path, where: str) -> float:
    text = _xml_text(node, tag, file, where)
    try:
        return float(text)
    except ValueError:
        raise DataError(file, f"{where}.{tag}", f"expected a number, got {text!r:.40}") from None


def _read_voc_xml(file: Path, names: Sequence[str]) -> tuple[int, int, list[tuple[int, list[float], int, str]]]:
    """``(width, height, [(category_id, bbox xywh, difficult, source)])``; an unknown name gets id -1."""
    try:
        root = ET.parse(file).getroot()
    except FileNotFoundError:
        raise DataError(file, "file", "listed in the image set but the annotation file is missing") from None
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(file, f"line {line} column {col}", f"malformed XML: {e}") from None
    except OSError as e:
        raise DataError(file, "file", f"cannot read annotation file: {e.strerror or e}") from e
    size = root.find("size")
    if size is None:
        raise DataError(file, "annotation", "missing <size>")
    width, height = (int(_xml_number(size, k, file, "size")) for k in ("width", "height"))
    if width <= 0 or height <= 0:
        raise DataError(file, "size", f"width and height must be positive, got {width}x{height}")
    objects = []
    for i, obj in enumerate(root.iter("object"), 1):
        where = f"object {i}"
        name = _xml_text(obj, "name", file, where)
        box = obj.find("bndbox")
        if box is None:
            raise DataError(file, where, "missing <bndbox>")
        x0, y0, x1, y1 = (_xml_number(box, k, file, f"{where}.bndbox") for k in ("xmin", "ymin", "xmax", "ymax"))
        difficult = obj.find("difficult")
        flag = int(difficult is not None and (difficult.text or "0").strip() not in ("0", ""))
        cat = names.index(name) if name in names else -1
        objects.append((cat, [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1], flag, f"{file} {where} ({name!r})"))
    return width, height, objects


def voc_to_coco(root: Path, image_set: Path, names: Sequence[str]) -> tuple[dict[str, Any], Path]:
    """A VOC split (``root`` holds ``Annotations/``, ``JPEGImages/``) as ``(COCO dict, image_dir)``."""
    ids = voc_ids(image_set)
    if not ids:
        raise DataError(image_set, "file", "the image set lists no images")
    images, annotations = [], []
    for image_id, voc_id in zip(_image_ids(ids), ids, strict=True):
        width, height, objects = _read_voc_xml(root / "Annotations" / f"{voc_id}.xml", names)
        images.append({"id": image_id, "file_name": f"{voc_id}.jpg", "width": width, "height": height})
        for cat, bbox, difficult, source in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "bbox": bbox,
                                "area": bbox[2] * bbox[3], "iscrowd": difficult, "source": source})
    return {"images": images, "annotations": annotations, "categories": _categories(names)}, root / "JPEGImages"


# ------------------------------------------------------------------------------------------------ entry point
def to_coco(fmt: str, source: Path, root: Path, names: Sequence[str], *, progress: bool = True
            ) -> tuple[dict[str, Any], Path]:
    """One split of a ``yolo`` or ``voc`` data YAML as ``(COCO dict, image_dir)``."""
    if fmt == "yolo":
        return yolo_to_coco(source, names, progress=progress)
    if fmt == "voc":
        return voc_to_coco(root, source, names)
    raise ValueError(f"no converter for format {fmt!r}")


def verify_split(fmt: str, source: Path, root: Path, names: Sequence[str], *, progress: bool = True) -> CheckReport:
    """Convert a split to COCO in memory and run :func:`verify_coco` on it (``source`` names it in messages)."""
    data, image_dir = to_coco(fmt, source, root, names, progress=progress)
    return verify_coco(source, image_dir, progress=progress, data=data)


def report_to_coco(report: CheckReport) -> dict[str, Any]:
    """The checked split as a COCO instances dict: usable images, kept (clipped) annotations, all categories."""
    images = [{"id": e.id, "file_name": e.file_name, "width": e.width, "height": e.height}
              for e in sorted(report.images.values(), key=lambda e: e.id)]
    annotations = [{k: v for k, v in a.items() if k != "source"} for a in report.gt_annotations]
    return {"images": images, "annotations": annotations, "categories": report.categories}
