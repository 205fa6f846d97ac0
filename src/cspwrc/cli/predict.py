"""Run a cspwrc detector on images or videos; draw boxes and write the detections.

    cspwrc predict --weights runs/det/best.safetensors --source img.jpg|folder/|'imgs/*.jpg'|clip.mp4 --out preds/ \
        [--img 640] [--conf 0.25] [--iou 0.6] [--classes 0 2 | --classes person car] [--max-det 300] \
        [--save-txt [--save-conf]] [--save-json]

--source is an image, a video (.mp4 .avi .mov .mkv), a folder of them, or a quoted glob. Writes:
  OUT/<name>.png per image and OUT/<name>.mp4 per video: boxes, class names and scores, text sized to the image;
  OUT/detections.json: per image (or video frame) its file, frame, size and detections with ``box`` (xyxy,
      original pixels), ``score``, ``label``, ``class_name``, ``category_id``;
  --save-txt: OUT/labels/<name>.txt (video frames: <name>_<frame>.txt), one YOLO line per box:
      ``label x_center y_center width height`` normalised to [0, 1] (+ ``score`` with --save-conf);
  --save-json: OUT/predictions.json, COCO results (``image_id``: the file name when it is a number, as in COCO,
      else the image's 1-based position; ``category_id``; ``bbox`` xywh original pixels; ``score``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cspwrc.atomic import make_dir, write_bytes, write_json
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.data.image_io import read_rgb
from cspwrc.data.media import VIDEO_SUFFIXES, list_sources, predict_video
from cspwrc.deploy.exported import load_model
from cspwrc.det.predict import class_names, coco_results, describe, detect, input_size, select, yolo_lines
from cspwrc.draw import draw_boxes
from cspwrc.engine.distributed import resolve_device
from cspwrc.errors import InputError, SampleReadError, shorten


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="cspwrc .safetensors checkpoint, or an exported .onnx")
    parser.add_argument("--source", required=True, help="an image, a video, a folder of them, or a quoted glob")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--img", type=int, default=None, help="inference size (default: the checkpoint's)")
    parser.add_argument("--conf", type=float, default=0.25, help="minimum score to keep and draw")
    parser.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default: the model's post.nms_iou)")
    parser.add_argument("--classes", nargs="+", default=None, help="keep only these classes (indices or names)")
    parser.add_argument("--max-det", type=int, default=300, help="at most this many detections per image")
    parser.add_argument("--save-txt", action="store_true", help="YOLO-format labels in OUT/labels/")
    parser.add_argument("--save-conf", action="store_true", help="with --save-txt: append the score to each line")
    parser.add_argument("--save-json", action="store_true", help="COCO results in OUT/predictions.json")
    parser.add_argument("--device", default="auto")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def class_indices(wanted: list[str] | None, names: list[str]) -> set[int] | None:
    """``--classes`` as label indices; each item is an index or a class name."""
    if wanted is None:
        return None
    out = set()
    for item in wanted:
        if item.isdigit() and int(item) < len(names):
            out.add(int(item))
        elif item in names:
            out.add(names.index(item))
        else:
            raise InputError(f"--classes {item}: not a class index (0..{len(names) - 1}) or name of this model "
                             f"({shorten(', '.join(names))})")
    return out


class Writer:
    """Everything ``predict`` writes besides the drawn images and videos."""

    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out, self.args = out, args
        self.records: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.kept = 0
        self.best_score = 0.0  # the highest score before --conf, for the "nothing passed" warning

    def add(self, path: Path, frame: int | None, image: np.ndarray, det: dict[str, torch.Tensor],
            dets: list[dict[str, Any]]) -> None:
        height, width = image.shape[:2]
        self.kept += len(dets)
        self.best_score = max([self.best_score, *det["scores"].tolist()])
        record = {"file": str(path), "height": height, "width": width, "detections": dets}
        if frame is not None:
            record["frame"] = frame
        self.records.append(record)
        stem = path.stem if frame is None else f"{path.stem}_{frame}"
        if self.args.save_txt:
            lines = yolo_lines(dets, height, width, self.args.save_conf)
            write_bytes(self.out / "labels" / f"{stem}.txt", lines.encode())
        if self.args.save_json:
            image_id = int(stem) if stem.isdigit() else len(self.records)
            self.results.extend(coco_results([d["box"] for d in dets], [d["score"] for d in dets],
                                             [d["category_id"] for d in dets], image_id))

    def close(self, skipped: int) -> None:
        write_json(self.out / "detections.json", {"images": self.records, "skipped": skipped})
        if self.args.save_json:
            write_json(self.out / "predictions.json", self.results, indent=None)
        if self.records and not self.kept:
            print(f"warning: no detection scored >= --conf {self.args.conf} on {len(self.records)} image(s)/frame(s) "
                  f"(highest score {self.best_score:.3f}); lower --conf to see weaker ones", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    device = resolve_device(args.device)
    model, meta = load_model(args.weights, device)
    sources = list_sources(args.source)
    names = class_names(meta)
    classes = class_indices(args.classes, names)
    img = input_size(meta, args.img)
    if args.iou is not None:
        model.cfg.post.nms_iou = args.iou
    model.cfg.post.max_det = max(model.cfg.post.max_det, args.max_det)
    make_dir(out)  # --out naming a file is exit 2
    writer, skipped = Writer(out, args), 0

    def predict(path: Path, image: np.ndarray, frame: int | None) -> np.ndarray:
        det = detect(model, image, img)
        dets = describe(select(det, args.conf, classes, args.max_det), meta)
        writer.add(path, frame, image, det, dets)
        return draw_boxes(image, [d["box"] for d in dets], [d["label"] for d in dets], names,
                          [d["score"] for d in dets])

    for path in sources:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            predict_video(path, out, predict)
            continue
        try:
            image = read_rgb(path)  # EXIF orientation applied, as COCO and the training data define it
        except SampleReadError as err:  # one bad file is skipped and counted, not fatal
            print(f"skipped {path}: {err}", file=sys.stderr)
            skipped += 1
            continue
        drawn = predict(path, image, None)
        Image.fromarray(drawn).save(out / f"{path.stem}.png")
        print(f"{path.name}: {len(writer.records[-1]['detections'])} detections")
    writer.close(skipped)
    if not writer.records:
        raise InputError(f"--source {shorten(args.source)}: none of its {len(sources)} file(s) could be read "
                         "(the reasons are above)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
