"""Export a folded cspwrc detector to ONNX (dynamic batch, opset 17) or TorchScript (logic in cspwrc.deploy.export).

The exported graph maps images float32 [B, 3, S, S] (RGB in [0, 1], letterboxed) to raw [B, A, 4 + C]
(xyxy boxes in input pixels + class probabilities); run cspwrc.deploy.postprocess.postprocess_numpy after it.

The file's metadata (ONNX metadata_props: names, imgsz, stride, input, outputs, nms, cspwrc_version) says all
this too. With --nms the ONNX graph ends in NonMaxSuppression and outputs boxes [K, 4], scores [K], labels [K],
batch_index [K] (the detector's own post-processing; only undo_letterbox_numpy is left to the caller).

Examples:
    python tools/export.py --weights runs/exp/best.safetensors --format onnx --out model.onnx
    python tools/export.py --model cspwrc_s --num-classes 80 --format torchscript --img 640 --out model.ts
    python tools/export.py --weights runs/exp/best.safetensors --nms --conf 0.25 --out model_nms.onnx
    python tools/export.py --weights runs/exp/best.safetensors --int8 --data my.yaml --out model_int8.onnx

Exit codes: 0 done, 2 bad input (a checkpoint that is refused, truncated, empty or not a cspwrc detector; an
unknown --model; a bad --img), 3 the output could not be written, or the exported file does not reproduce PyTorch
on a random batch within the tolerance of cspwrc.deploy.parity: raw ONNX / TorchScript outputs (boxes 0.05 px,
probabilities 1e-4; --half: 1 px, 0.01) or the --nms graph's detections (the message names the image and what
differed); --debug for tracebacks.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import cspwrc  # noqa: F401 - registers the cspwrc models with timm
from cspwrc.atomic import WriteError
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.data import CocoDetection, build_loader
from cspwrc.data.config import load_data_config
from cspwrc.deploy.export import (
    FORMATS,
    NMS_OUTPUTS,
    EndToEnd,
    check_export,
    check_export_nms,
    deploy_model,
    export,
    export_onnx_nms,
    half_onnx,
    load_for_export,
    onnx_metadata,
    onnx_to_openvino,
    write_onnx_metadata,
)
from cspwrc.deploy.exported import ExportedDetector, load_model
from cspwrc.deploy.parity import HALF_TOLERANCE, ExportMismatch, NmsTolerance, parity_report, raw_parity
from cspwrc.deploy.quantize import DEFAULT_CALIB, calibration_images, quantize_int8, quantize_openvino_int8
from cspwrc.det.load import DEFAULT_IMG, input_size
from cspwrc.engine.config import check_model_name
from cspwrc.engine.evaluate import coco_evaluate, predict_loader
from cspwrc.errors import InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path, help="cspwrc detector checkpoint (.safetensors)")
    src.add_argument("--model", help="backbone name for a freshly initialised detector (e.g. to test a runtime)")
    p.add_argument("--num-classes", type=int, default=80, help="with --model")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx (a file), torchscript (a file), openvino (an IR folder: --out NAME_openvino_model)")
    p.add_argument("--img", type=int, default=None, help=f"input size (default: the checkpoint's, else {DEFAULT_IMG})")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-check", action="store_true", help="skip the PyTorch-vs-export parity check")
    p.add_argument("--nms", action="store_true", help="ONNX only: end the graph with NonMaxSuppression "
                   "(outputs boxes, scores, labels, batch_index)")
    p.add_argument("--conf", type=float, default=None, help="with --nms: score threshold (default: the detector's)")
    p.add_argument("--iou", type=float, default=None, help="with --nms: NMS IoU threshold (default: the detector's)")
    p.add_argument("--max-det", type=int, default=None,
                   help="with --nms: detections per image (default: the detector's)")
    p.add_argument("--half", action="store_true",
                   help="fp16 weights and compute (ONNX only; input and output stay float32), for GPU runtimes")
    p.add_argument("--int8", action="store_true", help="int8 calibrated on --data's train images (ONNX: "
                   "onnxruntime static QDQ; OpenVINO: NNCF); box decoding and post-processing stay float")
    p.add_argument("--data", help="with --int8: data YAML whose train images calibrate and whose val images check "
                   "the int8 model's mAP against the float one")
    p.add_argument("--calib", type=int, default=DEFAULT_CALIB, help="with --int8: calibration images")
    add_debug_flag(p)
    args = p.parse_args(argv)
    if args.nms and args.format == "torchscript":
        p.error("--nms needs --format onnx or openvino (the NonMaxSuppression graph is an ONNX export)")
    if not args.nms and any(v is not None for v in (args.conf, args.iou, args.max_det)):
        p.error("--conf/--iou/--max-det set the exported NMS: add --nms")
    if args.half and (args.format == "torchscript" or (args.format == "onnx" and args.nms)):
        p.error("--half needs --format onnx without --nms (the fp16 graph ends at raw; run postprocess_numpy after "
                "it), or --format openvino")
    if args.int8 and (args.format == "torchscript" or args.half or not args.data):
        p.error("--int8 needs --format onnx or openvino, no --half, and --data (the images it is calibrated on)")
    return args


def run(args: argparse.Namespace) -> int:
    if args.model:
        check_model_name(args.model)
    detector, meta = load_for_export(args.weights, args.model, args.num_classes)
    img = input_size(meta, args.img)
    module = deploy_model(detector)
    images = calibration_images(args.data, img, args.calib) if args.int8 else None  # exit 2 before any write
    try:  # the exporters write the files themselves
        if args.format == "openvino" or args.int8:
            return _export_derived(args, detector, meta, module, img, images)
        if args.nms:
            e2e = _write_float_onnx(args, detector, meta, module, img, args.out)
            _print_nms_graph(args.out, e2e, img)
            if not args.no_check:  # exit 3 when onnxruntime does not keep what PyTorch keeps, within the tolerance
                print(parity_report(check_export_nms(e2e, args.out, torch.rand(2, 3, img, img)), NmsTolerance()))
            return 0
        metadata = onnx_metadata(meta, img, max(detector.strides))
        path = export(module, args.format, args.out, img, metadata)
        if args.half:  # the fp16 rewrite keeps the graph, not the file's metadata
            write_onnx_metadata(half_onnx(path), metadata)
    except OSError as err:
        raise WriteError(f"could not write {args.out}: {err}") from err
    print(f"wrote {path} ({args.format}{', fp16 inside' if args.half else ''}, input images [B, 3, {img}, {img}] "
          f"in [0, 1], output raw [B, A, 4 + "
          f"{meta['num_classes']}])")
    if not args.no_check:
        # exit 3 when the file does not reproduce PyTorch within the tolerance (fp16 inside: a wider one)
        print(check_export(module, args.format, path, img, tol=HALF_TOLERANCE if args.half else NmsTolerance()))
    return 0


def _write_float_onnx(args: argparse.Namespace, detector: torch.nn.Module, meta: dict, module: torch.nn.Module,
                      img: int, path: Path) -> EndToEnd | None:
    """The float ONNX graph with its metadata: raw, or with the post-processing inside (``--nms``: NMS, or the top-k
    of an end-to-end head), whose :class:`EndToEnd` module is returned for the parity check."""
    if not args.nms:
        export(module, "onnx", path, img, onnx_metadata(meta, img, max(detector.strides)))
        return None
    cfg = detector.cfg.post
    if detector.end2end and args.iou is not None:
        raise InputError(f"--iou {args.iou}: {args.weights or args.model} has an end-to-end head, whose graph keeps "
                         "the top --max-det detections without NMS")
    e2e = EndToEnd(module, img, cfg.score_thresh if args.conf is None else args.conf,
                   cfg.nms_iou if args.iou is None else args.iou,
                   cfg.max_det if args.max_det is None else args.max_det, cfg.pre_nms_topk, nms=not detector.end2end)
    write_onnx_metadata(export_onnx_nms(e2e, path, img), onnx_metadata(meta, img, max(detector.strides), e2e))
    return e2e


def _print_nms_graph(path: Path, e2e: EndToEnd, img: int, fmt: str = "onnx") -> None:
    tail = f"iou {e2e.nms_iou}, " if e2e.nms else ""
    print(f"wrote {path} ({fmt} + {'NonMaxSuppression' if e2e.nms else 'top-k of the end-to-end head, no NMS'}, "
          f"input images [B, 3, {img}, {img}] in [0, 1], outputs boxes [K, 4], scores [K], labels [K], "
          f"batch_index [K]; conf {e2e.score_thresh}, {tail}max_det {e2e.max_det})")


# An int8 model more than this far below its float model on the check images is not shipped silently (exit 3).
INT8_MAX_DROP = 0.05


def _export_derived(args: argparse.Namespace, detector: torch.nn.Module, meta: dict, module: torch.nn.Module,
                    img: int, images: np.ndarray | None) -> int:
    """``--int8`` and ``--format openvino``: the float ONNX graph (raw or --nms) in a temporary file, then quantized
    (onnxruntime QDQ or NNCF) and/or converted to OpenVINO into ``--out``. Checked: an int8 file's mAP against the
    float one on up to :data:`INT8_CHECK_IMAGES` val images of ``--data`` (a drop over :data:`INT8_MAX_DROP` is exit
    3); a float OpenVINO model's outputs against PyTorch's, like the ONNX exports."""
    with tempfile.TemporaryDirectory(prefix="cspwrc_export_") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        e2e = _write_float_onnx(args, detector, meta, module, img, fp32)
        if args.format == "openvino":
            ov_model = quantize_openvino_int8(fp32, images) if args.int8 else None
            onnx_to_openvino(fp32, args.out, half=args.half, ov_model=ov_model)
            kind = "int8 (NNCF)" if args.int8 else "fp16 weights" if args.half else "fp32"
        else:
            quantize_int8(fp32, args.out, images)
            kind = "int8 QDQ, network quantized, decoding float"
        calibrated = f", calibrated on {len(images)} train images of {args.data}" if images is not None else ""
        if e2e is None:
            print(f"wrote {args.out} ({args.format} {kind}{calibrated}; input images [B, 3, {img}, {img}] in [0, 1], "
                  f"output raw [B, A, 4 + {meta['num_classes']}])")
        else:
            _print_nms_graph(args.out, e2e, img, f"{args.format} {kind}{calibrated}")
        if args.no_check:
            return 0
        if args.int8:
            print(int8_check(fp32, args.out, args.data, img, meta))
            return 0
        # A float OpenVINO model: the same parity checks as the ONNX exports, on OpenVINO's outputs.
        runner = ExportedDetector(args.out).run
        x = torch.rand(2, 3, img, img)
        tol = HALF_TOLERANCE if args.half else NmsTolerance()
        if e2e is None:
            with torch.no_grad():
                print(raw_parity(module(x).numpy(), runner(x.numpy())[0], tol, "openvino"))
        else:
            got = dict(zip(NMS_OUTPUTS, runner(x.numpy()), strict=True))
            print(parity_report(check_export_nms(e2e, fp32, x, tol, got=got), tol))
    return 0


INT8_CHECK_IMAGES = 100


def int8_check(fp32: Path, int8: Path, data_yaml: str, img: int, meta: dict) -> str:
    """mAP@[.5:.95] of the float and the int8 file on the first :data:`INT8_CHECK_IMAGES` val images of the data
    set; :class:`ExportMismatch` (exit 3) when int8 loses more than :data:`INT8_MAX_DROP`."""
    cfg = load_data_config(data_yaml)
    data = CocoDetection(cfg.val.ann, cfg.val.images, img=img, train=False, num_images=INT8_CHECK_IMAGES,
                         progress=False)
    loader = build_loader(data, 8, train=False, workers=0)
    ids = [int(c) for c in meta.get("category_ids", range(int(meta["num_classes"])))]
    scores = {}
    for name, path in (("float", fp32), ("int8", int8)):
        model, _ = load_model(path)
        results, image_ids = predict_loader(model, loader, ids, torch.device("cpu"), progress=False)
        scores[name] = coco_evaluate(data.coco_gt(), results, image_ids).map
    line = (f"int8 check on {len(data)} val images of {data_yaml}: mAP@[.5:.95] float {scores['float']:.4f}, int8 "
            f"{scores['int8']:.4f} ({scores['int8'] - scores['float']:+.4f})")
    if scores["float"] - scores["int8"] > INT8_MAX_DROP:
        raise ExportMismatch(f"{line}: the int8 model loses more than {INT8_MAX_DROP} mAP. The file is written; do "
                             "not deploy it (more --calib images, or keep the float model)")
    return line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(lambda: run(args), args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
