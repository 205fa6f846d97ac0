"""Export a folded cspwrc detector to ONNX (dynamic batch, opset 17) or TorchScript (logic in cspwrc.deploy.export).

The exported graph maps images float32 [B, 3, S, S] (RGB in [0, 1], letterboxed) to raw [B, A, 4 + C]
(xyxy boxes in input pixels + class probabilities); run cspwrc.deploy.postprocess.postprocess_numpy after it.

Examples:
    python tools/export.py --weights runs/exp/best.safetensors --format onnx --out model.onnx
    python tools/export.py --model cspwrc_s --num-classes 80 --format torchscript --img 640 --out model.ts

Exit codes: 0 done, 2 bad input (a checkpoint that is refused, truncated, empty or not a cspwrc detector; an
unknown --model; a bad --img), 3 the output could not be written; --debug for tracebacks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cspwrc  # noqa: F401 - registers the cspwrc models with timm
from cspwrc.atomic import WriteError
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.deploy.export import FORMATS, check_export, deploy_model, export, load_for_export
from cspwrc.engine.config import ConfigError, check_model_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path, help="cspwrc detector checkpoint (.safetensors)")
    src.add_argument("--model", help="backbone name for a freshly initialised detector (e.g. to test a runtime)")
    p.add_argument("--num-classes", type=int, default=80, help="with --model")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--img", type=int, default=None, help="input size (default: the checkpoint's, else 640)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-check", action="store_true", help="skip the PyTorch-vs-export parity check")
    add_debug_flag(p)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if args.model:
        check_model_name(args.model)
    detector, meta = load_for_export(args.weights, args.model, args.num_classes)
    img = args.img or int(meta.get("img", 640))
    if img <= 0 or img % 32:
        raise ConfigError(f"--img {img} must be a positive multiple of 32")
    module = deploy_model(detector)
    try:
        path = export(module, args.format, args.out, img)
    except OSError as err:  # the exporters write the file themselves
        raise WriteError(f"could not write {args.out}: {err}") from err
    print(f"wrote {path} ({args.format}, input images [B, 3, {img}, {img}] in [0, 1], output raw [B, A, 4 + "
          f"{meta['num_classes']}])")
    if not args.no_check:
        print(f"max |pytorch - {args.format}| on a batch of 2: {check_export(module, args.format, path, img):.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(lambda: run(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
