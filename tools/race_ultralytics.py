"""The Ultralytics side of tools/race.py: train, predict the val images, time bs1 latency; runs in ITS OWN venv.

Never imported by cspwrc: `tools/race.py` starts it with ``--ultralytics-python`` (a venv where
``pip install ultralytics`` was run), so Ultralytics stays a measuring stick, not a dependency.

    python tools/race_ultralytics.py --model yolov8n --data RUN/yolo/data.yaml --val-index RUN/yolo/val_index.json \
        --img 320 --time-h 1.0 --threads 2 --workers 2 --seed 0 --out RUN/yolov8n
    python tools/race_ultralytics.py --latency-only --model yolov8n --threads 2 --latency-img 320 640 --out RUN/yolov8n

Training writes OUT/detections.json (COCO results: val image ids and category ids from val_index.json) and
OUT/summary.json (params, GFLOPs, epochs, train wall time; tools/race.py adds the optimizer, read from this run's
log and args.yaml); ``--latency-only`` adds the bs1 latency of the trained model at each ``--latency-img``
(tools/race.py runs it in a quiet phase): in PyTorch (fused, channels_last), with and without Ultralytics' NMS,
and in ONNX Runtime where onnx and onnxruntime are importable (its own ONNX export: the raw graph, and with
``nms=True`` the graph with NMS inside). An end-to-end NMS-free head (YOLO26: ``model.model[-1].end2end``, output
``[B, 300, 6]``, already the detections) is timed without NMS in both runtimes (ONNX: ``nms=False``, the NMS-free
graph) and recorded as ``end2end``; ``latency_timed`` says what each runtime timed.

A fair race on any CPU: Ultralytics' MuSGD (its ``optimizer=auto`` choice under ``time=``) runs the Newton-Schulz
iterations of its Muon part in bfloat16. On a CPU without native bf16 (AVX2 only, e.g. AMD Zen 3) a bf16 matmul is
~16x slower than fp32, the first epochs take 3-4x longer and the ``time=`` planner then cuts the schedule: the race
would measure the machine, not the recipe. Before training, :func:`matmul_check` times one Newton-Schulz-sized
product in both dtypes (``--newton-schulz auto``); where bf16 is over :data:`BF16_SLOW` times slower, the same
iteration runs in float32 (:func:`newton_schulz_fp32`, the same algorithm and coefficients) and the summary says so
(``newton_schulz``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing to download: model from its YAML, no fonts, no hub

import torch  # after YOLO_OFFLINE, which Ultralytics reads on import
import ultralytics.optim.muon as muon
from ultralytics import YOLO
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.torch_utils import get_flops


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="yolov8n, yolo11n, ... (built from its YAML, from scratch)")
    p.add_argument("--latency-only", action="store_true", help="time the trained model (OUT/train/weights/last.pt)")
    p.add_argument("--data", help="Ultralytics data YAML written by tools/race.py")
    p.add_argument("--val-index", help="JSON: val image files -> COCO ids, class index -> category id")
    p.add_argument("--img", type=int, default=640)
    p.add_argument("--time-h", type=float, help="training budget in hours (Ultralytics' time=)")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-img", type=int, nargs="*", default=[320, 640])
    p.add_argument("--nms-conf", type=float, default=0.25, help="NMS score threshold of the latency phase")
    p.add_argument("--nms-iou", type=float, default=0.7, help="NMS IoU threshold of the latency phase")
    p.add_argument("--newton-schulz", choices=("auto", "bf16", "fp32"), default="auto",
                   help="dtype of MuSGD's Newton-Schulz iteration: auto = fp32 where this CPU's bf16 matmul is slow")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in OUT/train (resume=True)")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


# bf16 / fp32 time ratio of the check's matmul above which bf16 is emulated (native bf16: ~0.5-1.5x; emulated: ~16x).
BF16_SLOW = 3.0


def matmul_check(repeats: int = 5) -> dict[str, float]:
    """Median ms of one ``[256, 1152] @ [1152, 256]`` product (a MuSGD Newton-Schulz step's size) in bf16 and fp32,
    with the threads this process trains with."""
    a, b = torch.randn(256, 1152), torch.randn(1152, 256)
    times = {}
    for name, dtype in (("bf16_ms", torch.bfloat16), ("fp32_ms", torch.float32)):
        x, y = a.to(dtype), b.to(dtype)
        times[name] = latency_ms(partial(torch.matmul, x, y), repeats=repeats, warmup=2)
    return times


def newton_schulz_fp32(G: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Ultralytics' ``zeropower_via_newtonschulz5`` (same quintic iteration, coefficients and steps), in float32."""
    X = G.reshape(-1, G.size(-2), G.size(-1)).float()
    X /= X.norm(dim=(-2, -1), keepdim=True) + eps
    if G.size(-2) > G.size(-1):
        X = X.transpose(-2, -1)
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(5):
        A = X @ X.transpose(-2, -1)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    if G.size(-2) > G.size(-1):
        X = X.transpose(-2, -1)
    return X.reshape(G.shape)


def choose_newton_schulz(mode: str) -> dict:
    """Apply ``--newton-schulz`` to MuSGD (module-level patch of ``ultralytics.optim.muon``, which its update calls)
    and return what the summary records: the dtype used, the check's timings and why."""
    check = matmul_check()
    ratio = check["bf16_ms"] / check["fp32_ms"]
    fp32 = mode == "fp32" or (mode == "auto" and ratio > BF16_SLOW)
    if fp32:
        muon.zeropower_via_newtonschulz5 = newton_schulz_fp32
    why = (f"--newton-schulz {mode}" if mode != "auto" else
           f"bf16 matmul {ratio:.1f}x fp32 on this CPU ({'>' if fp32 else '<='} {BF16_SLOW}: "
           f"{'no native bf16, run in fp32' if fp32 else 'Ultralytics own bf16'})")
    print(f"MuSGD Newton-Schulz in {'float32' if fp32 else 'bfloat16'}: {why}", flush=True)
    return {"dtype": "float32" if fp32 else "bfloat16", **check, "ratio": ratio, "why": why}


def train(args: argparse.Namespace) -> tuple[YOLO, dict]:
    last = args.out / "train" / "weights" / "last.pt"
    t0 = time.perf_counter()
    if args.resume:  # its saved args (budget, seed, epochs planned) and optimizer state; the same MuSGD patch
        YOLO(str(last)).train(resume=True)
    else:
        # val=False: no per-epoch validation inside the budget (Ultralytics still validates after the last epoch);
        # scoring is done by tools/race.py with pycocotools, the same scorer for every contestant.
        YOLO(f"{args.model}.yaml").train(
            data=args.data, imgsz=args.img, epochs=1000, time=args.time_h, batch=args.batch, device="cpu",
            workers=args.workers, seed=args.seed, deterministic=True, val=False, plots=False, amp=False,
            project=str(args.out.resolve()), name="train", exist_ok=True, verbose=False)
    wall = time.perf_counter() - t0
    epochs = len((args.out / "train" / "results.csv").read_text().strip().splitlines()) - 1
    return YOLO(str(last)), {"train_wall_s": wall, "epochs": epochs, "resumed": args.resume}


def predict(model: YOLO, args: argparse.Namespace, index: dict) -> list[dict]:
    """Val detections as COCO results; Ultralytics' own val settings (conf 0.001, iou 0.7, max_det 300)."""
    results = []
    for file, image_id in index["images"].items():
        pred = model.predict(file, imgsz=args.img, conf=0.001, iou=0.7, max_det=300, device="cpu", verbose=False)[0]
        for (x1, y1, x2, y2), score, cls in zip(pred.boxes.xyxy.tolist(), pred.boxes.conf.tolist(),
                                                pred.boxes.cls.tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": index["category_ids"][int(cls)],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


def latency_ms(call, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time (ms) of ``call()`` over ``repeats`` runs after ``warmup`` untimed ones.

    The twin of cspwrc.deploy.timing.latency_ms, which times our contestants: this script runs in Ultralytics' venv
    without cspwrc, so it keeps a copy; keep the two the same (warm-up, runs, median).
    """
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


@torch.inference_mode()
def time_pytorch(net: torch.nn.Module, args: argparse.Namespace, end2end: bool) -> dict:
    """bs1 latency of the fused model (channels_last): forward, and with Ultralytics' NMS; an end-to-end head's
    output is the detections already, so it is timed once, as ``with_nms``, without an NMS call."""
    timed = {}
    for s in args.latency_img:
        x = torch.rand(1, 3, s, s).contiguous(memory_format=torch.channels_last)
        if end2end:
            timed[str(s)] = {"with_nms": latency_ms(partial(net, x))}
        else:
            timed[str(s)] = {"forward": latency_ms(partial(net, x)), "with_nms": latency_ms(  # x=x: this size's input
                lambda x=x: non_max_suppression(net(x), conf_thres=args.nms_conf, iou_thres=args.nms_iou, max_det=300))}
    return timed


def time_onnxruntime(weights: Path, args: argparse.Namespace, end2end: bool) -> dict | str:
    """bs1 latency of Ultralytics' ONNX exports under onnxruntime (``--threads`` intra-op threads, as cspwrc's
    ort_session): ``forward`` = ``nms=None`` (raw graph), ``with_nms`` = ``nms=True`` (NMS in the graph); an
    end-to-end head: ``with_nms`` = ``nms=False`` (its NMS-free graph). A reason string when it cannot run."""
    try:
        import onnx  # noqa: F401, PLC0415 - optional in this venv: the export needs it
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as exc:
        return f"skipped: {exc}"
    graphs = {"with_nms": {"nms": False}} if end2end else {
        "forward": {}, "with_nms": {"nms": True, "conf": args.nms_conf, "iou": args.nms_iou}}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    timed: dict = {}
    with tempfile.TemporaryDirectory(prefix="race_onnx_") as tmp:
        model = YOLO(shutil.copy(weights, Path(tmp) / "last.pt"))  # the export lands beside it, in tmp
        for s in args.latency_img:
            x = torch.rand(1, 3, s, s).numpy()
            for key, kwargs in graphs.items():
                path = model.export(format="onnx", imgsz=s, batch=1, simplify=False, dynamic=False, device="cpu",
                                    verbose=False, **kwargs)
                session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                feed = {session.get_inputs()[0].name: x}
                timed.setdefault(str(s), {})[key] = latency_ms(partial(session.run, None, feed))
    return timed


def measure_latency(args: argparse.Namespace, summary: dict) -> dict:
    """The latency entries of the summary (the same keys as cspwrc's contestants get)."""
    weights = args.out / "train" / "weights" / "last.pt"
    model = YOLO(str(weights)).model.float()
    # One-to-one (NMS-free) head present but not selected: Ultralytics' default nms=None predicts with the
    # one-to-many head + NMS (so did the scored val detections); fuse() then drops the unused head.
    unused_nms_free = getattr(model.model[-1], "one2one_cv2", None) is not None and not model.model[-1].end2end
    net = model.fuse().eval().to(memory_format=torch.channels_last)
    end2end = bool(getattr(net.model[-1], "end2end", False))
    nms = f"score {args.nms_conf}, IoU {args.nms_iou}"
    summary.pop("latency_ort_ms", None)
    summary.update(end2end=end2end, latency_threads=args.threads, latency_ms=time_pytorch(net, args, end2end),
                   latency_timed={"pytorch": "PyTorch, fused + channels_last; " + (
                       "end-to-end NMS-free head: with_nms = forward ([1, 300, 6] detections), no NMS run" if end2end
                       else f"forward = model, with_nms = + ultralytics non_max_suppression ({nms})") + (
                       "; the model's NMS-free one-to-one head is not selected (nms=None, as for the scored "
                       "detections): the one-to-many head + NMS is timed" if unused_nms_free else "")})
    ort_timed = time_onnxruntime(weights, args, end2end)
    if isinstance(ort_timed, str):
        summary["latency_timed"]["onnxruntime"] = ort_timed
    else:
        summary["latency_ort_ms"] = ort_timed
        summary["latency_timed"]["onnxruntime"] = "onnxruntime CPU, Ultralytics ONNX export (simplify=False); " + (
            "end-to-end NMS-free head: with_nms = export nms=False ([1, 300, 6] detections)" if end2end
            else f"forward = export nms=None (raw), with_nms = export nms=True ({nms}, NMS in the graph)")
    return summary


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_file = args.out / "summary.json"
    if args.latency_only:
        summary = measure_latency(args, json.loads(summary_file.read_text()))
    else:
        if not (args.data and args.val_index and args.time_h):
            raise SystemExit("training needs --data, --val-index and --time-h")
        newton_schulz = choose_newton_schulz(args.newton_schulz)
        model, summary = train(args)
        summary["newton_schulz"] = newton_schulz
        (args.out / "detections.json").write_text(json.dumps(predict(model, args, json.loads(
            Path(args.val_index).read_text()))))
        net = model.model.float().fuse().eval()
        summary.update(model=args.model, params_m=sum(p.numel() for p in net.parameters()) / 1e6,
                       gflops_at_img=get_flops(net, args.img), img=args.img)
    summary_file.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
