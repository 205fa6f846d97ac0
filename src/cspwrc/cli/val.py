"""Evaluate a cspwrc detector checkpoint, or the file exported from it, on any COCO-format annotation file.

    python tools/eval_det.py --weights runs/det/best.safetensors --ann instances_val.json --images val/ \
        [--img 640] [--out results.json]
    python tools/eval_det.py --weights model.onnx --ann instances_val.json --images val/     # what you ship

An exported file is read through its own metadata (cspwrc.deploy.exported): classes, input size, post-processing.

Prints the 12 standard COCOeval numbers and a per-class table (instances, P/R/F1 at the best-F1 confidence,
AP50, AP; classes without instances marked); writes COCO results JSON (original category ids, xywh boxes in
original-image pixels) to --out. Only the model's classes that the annotation file has are scored (a line says
which). --json also writes the numbers and the confusion matrix; the plots (confusion_matrix.png, PR_curve.png,
F1_curve.png) go next to --json, or to --plots DIR.

--ann and --images go through the same checks as training (cspwrc.data.checks): a malformed, missing or
wrongly-shaped file is exit 2 naming it; unusable images and boxes are skipped and counted. Exit codes: 0 done,
2 bad input (checkpoint, annotation file, flags), 3 an output file could not be written; --debug for tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cspwrc.atomic import write_json
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.data import (
    CheckReport,
    CocoDetection,
    DataError,
    SampleReadError,
    build_loader,
    read_error_message,
    verify_coco,
)
from cspwrc.deploy.exported import load_model
from cspwrc.det.load import input_size
from cspwrc.engine.distributed import resolve_device
from cspwrc.engine.eval_plots import write_eval_plots
from cspwrc.engine.evaluate import coco_evaluate, predict_loader, write_results
from cspwrc.errors import RunStopped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="cspwrc .safetensors checkpoint (last/best), or a file "
                        "`cspwrc export` wrote (.onnx: raw, --nms, --half, int8)")
    parser.add_argument("--ann", required=True, help="COCO instances JSON")
    parser.add_argument("--images", required=True, help="image folder the JSON's file_names are relative to")
    parser.add_argument("--img", type=int, default=None, help="eval size, multiple of 32 (default: the checkpoint's)")
    parser.add_argument("--out", default=None, help="write COCO results JSON here")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the stats, per-class table and confusion matrix "
                        "as JSON (and the plots next to it)")
    parser.add_argument("--plots", default=None, help="write confusion_matrix.png, PR_curve.png, F1_curve.png here "
                        "(default: next to --json)")
    parser.add_argument("--no-progress", action="store_true")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def shared_categories(report: CheckReport, model_ids: list[int]) -> list[int]:
    """The model's category ids that the checked annotation file has (COCOeval scores only those)."""
    present = {c["id"] for c in report.categories}
    shared = [c for c in model_ids if c in present]
    if not shared:
        raise DataError(report.ann_file, "categories",
                        f"none of the model's category ids {model_ids[:20]} are in this file")
    return shared


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    model, meta = load_model(args.weights, device)
    img = input_size(meta, args.img)
    model_ids = [int(c) for c in meta.get("category_ids", range(int(meta["num_classes"])))]
    report = verify_coco(args.ann, args.images, progress=not args.no_progress)
    shared = shared_categories(report, model_ids)
    print(f"scoring {len(shared)} of the model's {len(model_ids)} classes: those {args.ann} has"
          + (f" (not in the file: {len(model_ids) - len(shared)})" if len(shared) < len(model_ids) else ""))
    dataset = CocoDetection(args.ann, args.images, img=img, train=False, categories=shared, report=report)
    loader = build_loader(dataset, args.batch, train=False, workers=args.workers)
    # Predictions use the model's label -> id map; classes absent from the file are ignored by COCOeval.
    read_failures: list[str] = []
    try:
        results, image_ids = predict_loader(model, loader, model_ids, device, progress=not args.no_progress,
                                            skipped=read_failures)
    except SampleReadError as err:  # an image kept failing after the check (in any loader worker): exit 3
        raise RunStopped(f"data broke during evaluation: {read_error_message(err)}; restore or remove the "
                         f"file(s) and run again") from err
    if args.out:
        write_results(args.out, results)
    outcome = coco_evaluate(dataset.coco_gt(), results, image_ids)
    print(outcome.format())
    skips = {"data_checks": dict(report.counts), "read_failures": len(read_failures)}
    print(f"skipped: {skips}")
    summary = {"stats": outcome.stats, **outcome.summary(),
               "num_images": outcome.num_images, "num_detections": outcome.num_detections, "img": img,
               "skips": skips}
    if args.json:
        write_json(args.json, summary)
    plots = args.plots or (Path(args.json).parent if args.json else None)
    if plots is not None and outcome.detection is not None:
        print("plots: " + ", ".join(str(p) for p in write_eval_plots(outcome.detection, plots)))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        with torch.inference_mode():
            run(args)
        return 0

    return guarded(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
