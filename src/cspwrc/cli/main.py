"""The ``cspwrc`` console script: ``cspwrc COMMAND [flags]``, one sub-command per module of :mod:`cspwrc.cli`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from cspwrc.cli import benchmark, convert, export, merge, predict, train, val, wrc_weights

COMMANDS: dict[str, tuple[Callable[[list[str] | None], int], str]] = {
    "train": (train.main, "train a detector (tools/train_det.py)"),
    "val": (val.main, "evaluate a checkpoint: COCO AP, P/R/F1, confusion matrix, plots (tools/eval_det.py)"),
    "predict": (predict.main, "run a checkpoint on images, folders, globs or videos (tools/predict.py)"),
    "export": (export.main, "export to ONNX or TorchScript (tools/export.py)"),
    "benchmark": (benchmark.main, "measure speed, FLOPs and params (tools/benchmark.py)"),
    "merge": (merge.main, "merge COCO files into one (tools/merge_coco.py)"),
    "convert": (convert.main, "convert a YOLO or VOC data set to COCO JSON (tools/convert_data.py)"),
    "wrc-weights": (wrc_weights.main, "show the learned WRC weights of a checkpoint (tools/wrc_weights.py)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: cspwrc COMMAND [flags]   (cspwrc COMMAND --help for its flags)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n{usage()}", file=sys.stderr)
        return 2
    return COMMANDS[command][0](rest)


if __name__ == "__main__":
    sys.exit(main())
