"""Export a folded cspwrc detector to ONNX (dynamic batch, opset 17) or TorchScript (logic in cspwrc.deploy.export).

The exported graph maps images float32 [B, 3, S, S] (RGB in [0, 1], letterboxed) to raw [B, A, 4 + C]
(xyxy boxes in input pixels + class probabilities); run cspwrc.deploy.postprocess.postprocess_numpy after it.

Examples:
    python tools/export.py --weights runs/exp/best.safetensors --format onnx --out model.onnx
    python tools/export.py --model cspwrc_s --num-classes 80 --format torchscript --img 640 --out model.ts
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cspwrc  # noqa: F401 - registers the cspwrc models with timm
from cspwrc.deploy.export import FORMATS, check_export, deploy_model, export, half_onnx, load_for_export


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
    p.add_argument("--half", action="store_true",
                   help="fp16 weights and compute (ONNX only; input and output stay float32), for GPU runtimes")
    args = p.parse_args(argv)
    if args.half and args.format != "onnx":
        p.error("--half needs --format onnx")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    detector, meta = load_for_export(args.weights, args.model, args.num_classes)
    img = args.img or int(meta.get("img", 640))
    if img % 32:
        raise SystemExit(f"--img {img} must be a multiple of 32")
    module = deploy_model(detector)
    path = export(module, args.format, args.out, img)
    if args.half:
        half_onnx(path)
    print(f"wrote {path} ({args.format}{', fp16 inside' if args.half else ''}, input images [B, 3, {img}, {img}] in [0, 1], output raw [B, A, 4 + "
          f"{meta['num_classes']}])")
    if not args.no_check:
        print(f"max |pytorch - {args.format}| on a batch of 2: {check_export(module, args.format, path, img):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
