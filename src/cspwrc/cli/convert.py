"""Convert the YOLO (Ultralytics) or Pascal VOC data set of a data YAML to COCO instances JSON.

    python tools/convert_data.py data/coco128_yolo.yaml --out runs/coco128_coco

Writes OUT/instances_train.json, OUT/instances_val.json and OUT/data.yaml (a COCO data YAML pointing at
them and at the original images). The splits go through the same checks as training: fatal problems stop
with the file and line, skipped records are counted and listed, and only what passed is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from cspwrc.atomic import write_bytes, write_json
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.data.checks import DataError
from cspwrc.data.config import load_data_config, split_report
from cspwrc.data.formats import report_to_coco


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="data YAML of format yolo (Ultralytics) or voc")
    parser.add_argument("--out", required=True, type=Path, help="folder for the JSON files and data.yaml")
    parser.add_argument("--no-progress", action="store_true")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    cfg = load_data_config(args.data)
    if cfg.train.format == "coco":
        raise DataError(cfg.file, "top level", "already COCO format: nothing to convert")
    args.out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, split in (("train", cfg.train), ("val", cfg.val)):
        report = split_report(cfg, split, progress=not args.no_progress)
        assert report is not None  # not COCO, checked above
        ann = args.out / f"instances_{name}.json"
        write_json(ann, report_to_coco(report), indent=None)
        print(f"{name}: {len(report.images)} images, {len(report.gt_annotations)} annotations, "
              f"{len(report.skipped)} records skipped -> {ann}")
        for problem in report.skipped[:10]:
            print(f"  skipped {problem}")
        # Paths relative to the output folder, so the data YAML works from wherever it is read.
        splits[name] = {"ann": ann.name, "images": os.path.relpath(report.image_dir, args.out)}
    text = yaml.safe_dump({**splits, "names": list(cfg.names or ())}, sort_keys=False, allow_unicode=True)
    write_bytes(args.out / "data.yaml", text.encode())
    print(f"wrote {args.out / 'data.yaml'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
