"""Run a cspwrc detector on images; draw boxes and write a detections JSON.

    python tools/predict.py --weights runs/det/best.safetensors --source img.jpg|folder/ --out preds/ \
        [--img 640] [--conf 0.25]

Writes ``OUT/<name>.png`` per image (boxes, class names, scores drawn with
torchvision.utils.draw_bounding_boxes) and ``OUT/detections.json``: per image its file, size and
detections with ``box`` (xyxy, original pixels), ``score``, ``label``, ``class_name``, ``category_id``.
An unreadable image is skipped and counted (``skipped``). Exit codes: 0 done, 2 bad input (checkpoint, --source,
--device, no readable image), 3 an output could not be written; --debug for tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.utils import draw_bounding_boxes

from cspwrc.atomic import make_dir, write_json
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.data.checks import to_rgb
from cspwrc.data.transforms import letterbox
from cspwrc.det.postprocess import undo_letterbox
from cspwrc.engine.checkpoint import load_detector
from cspwrc.engine.distributed import resolve_device
from cspwrc.errors import InputError, shorten

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--source", required=True, help="an image file or a folder of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--img", type=int, default=None, help="inference size (default: the checkpoint's)")
    parser.add_argument("--conf", type=float, default=0.25, help="minimum score to keep and draw")
    parser.add_argument("--device", default="auto")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def list_images(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    raise InputError(f"--source {shorten(source)}: no such file or folder")


def read_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB, EXIF orientation applied (as COCO and the training data define it)."""
    with Image.open(path) as im:
        im.load()
        return np.asarray(to_rgb(ImageOps.exif_transpose(im)))


@torch.inference_mode()
def detect(model: torch.nn.Module, image: np.ndarray, img: int, device: torch.device) -> dict[str, torch.Tensor]:
    canvas, scale, pad = letterbox(image, img)
    batch = torch.from_numpy(canvas).permute(2, 0, 1)[None].to(device).float().div_(255.0)
    out = model(batch)[0]
    out["boxes"] = undo_letterbox(out["boxes"].float().cpu(), scale, pad, image.shape[:2])
    return {k: v.cpu() for k, v in out.items()}


def describe(det: dict[str, torch.Tensor], meta: dict[str, Any], conf: float) -> list[dict[str, Any]]:
    names = meta.get("class_names") or [str(i) for i in range(int(meta["num_classes"]))]
    cat_ids = meta.get("category_ids") or list(range(len(names)))
    keep = det["scores"] >= conf
    return [{"box": [round(v, 2) for v in box], "score": round(float(score), 4), "label": int(label),
             "class_name": names[int(label)], "category_id": int(cat_ids[int(label)])}
            for box, score, label in zip(det["boxes"][keep].tolist(), det["scores"][keep], det["labels"][keep])]


def draw(image: np.ndarray, dets: list[dict[str, Any]], path: Path) -> None:
    tensor = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)  # own, writable copy
    if dets:
        boxes = torch.tensor([d["box"] for d in dets], dtype=torch.float32)
        labels = [f"{d['class_name']} {d['score']:.2f}" for d in dets]
        tensor = draw_bounding_boxes(tensor, boxes, labels=labels, width=2)
    Image.fromarray(tensor.permute(1, 2, 0).numpy()).save(path)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    device = resolve_device(args.device)
    model, meta = load_detector(args.weights, device)
    images = list_images(Path(args.source))
    img = args.img or int(meta.get("img", 640))
    make_dir(out)
    records, failed = [], 0
    for path in images:
        try:
            image = read_rgb(path)
        except (OSError, UnidentifiedImageError) as err:  # one bad file is skipped and counted, not fatal
            print(f"skipped {shorten(path)}: {shorten(err, 200)}", file=sys.stderr)
            failed += 1
            continue
        dets = describe(detect(model, image, img, device), meta, args.conf)
        draw(image, dets, out / f"{path.stem}.png")
        records.append({"file": str(path), "height": image.shape[0], "width": image.shape[1], "detections": dets})
        print(f"{path.name}: {len(dets)} detections")
    write_json(out / "detections.json", {"images": records, "skipped": failed})
    if images and not records:
        raise InputError(f"--source {shorten(args.source)}: none of its {len(images)} images could be read")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
