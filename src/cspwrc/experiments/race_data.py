"""The race's data for Ultralytics: a YOLO view of the same COCO files, so every contestant sees the same boxes."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from pycocotools.coco import COCO

from cspwrc.atomic import write_json
from cspwrc.data.config import load_data_config
from cspwrc.errors import InputError

__all__ = ["quiet_coco", "yolo_view"]


def quiet_coco(path: Path) -> COCO:
    """pycocotools' ``COCO(path)`` without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def yolo_view(data_yaml: str, folder: Path) -> tuple[Path, Path]:
    """An Ultralytics data set of symlinks to the COCO images plus YOLO labels made from the same annotations.

    Labels: one ``class cx cy w h`` line per box (normalised to the image, class = index in category-id order,
    crowd boxes left out as COCOeval ignores them). Returns the data YAML and the val index that maps val files back
    to COCO image ids and class indices to category ids (for the detections of the Ultralytics side).
    """
    cfg = load_data_config(data_yaml)
    val_files: dict[str, int] = {}
    category_ids: list[int] = []
    for split, spec in (("train", cfg.train), ("val", cfg.val)):
        if not spec.ann.is_file():
            raise InputError(f"{spec.ann}: no such annotation file")
        coco = quiet_coco(spec.ann)
        ids = sorted(coco.getCatIds())
        if category_ids and ids != category_ids:
            raise InputError(f"{spec.ann}: categories {ids} differ from train's {category_ids}")
        category_ids = ids
        cls_of = {c: i for i, c in enumerate(ids)}
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
        for image in coco.loadImgs(sorted(coco.getImgIds())):
            src = (spec.images / image["file_name"]).resolve()
            link = folder / "images" / split / Path(image["file_name"]).name
            if not link.is_symlink():
                link.symlink_to(src)
            w, h = image["width"], image["height"]
            lines = [f"{cls_of[a['category_id']]} {(a['bbox'][0] + a['bbox'][2] / 2) / w:.6f} "
                     f"{(a['bbox'][1] + a['bbox'][3] / 2) / h:.6f} {a['bbox'][2] / w:.6f} {a['bbox'][3] / h:.6f}"
                     for a in coco.loadAnns(coco.getAnnIds(imgIds=image["id"], iscrowd=False))
                     if a["bbox"][2] > 0 and a["bbox"][3] > 0]
            (folder / "labels" / split / f"{link.stem}.txt").write_text("".join(f"{line}\n" for line in lines))
            if split == "val":
                val_files[str(link)] = int(image["id"])
    names = [c["name"] for c in coco.loadCats(category_ids)]  # coco: val's, the loop's last split
    data = folder / "data.yaml"
    data.write_text(json.dumps({"path": str(folder.resolve()), "train": "images/train", "val": "images/val",
                                "names": names}))  # JSON is YAML
    index = folder / "val_index.json"
    write_json(index, {"images": val_files, "category_ids": category_ids})
    return data, index
