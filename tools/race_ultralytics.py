"""The Ultralytics side of tools/race.py: train, predict the val images, time bs1 latency; runs in ITS OWN venv.

Never imported by cspwrc: `tools/race.py` starts it with ``--ultralytics-python`` (a venv where
``pip install ultralytics`` was run), so Ultralytics stays a measuring stick, not a dependency.

    python tools/race_ultralytics.py --model yolov8n --data RUN/yolo/data.yaml --val-index RUN/yolo/val_index.json \
        --img 320 --time-h 1.0 --threads 2 --workers 2 --seed 0 --out RUN/yolov8n
    python tools/race_ultralytics.py --latency-only --model yolov8n --threads 2 --latency-img 320 640 --out RUN/yolov8n

Training writes OUT/detections.json (COCO results: val image ids and category ids from val_index.json) and
OUT/summary.json (params, GFLOPs, epochs, train wall time); ``--latency-only`` adds the bs1 latency of the trained
model, with and without Ultralytics' NMS, at each ``--latency-img`` (tools/race.py runs it in a quiet phase).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing to download: model from its YAML, no fonts, no hub

import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils.nms import non_max_suppression  # noqa: E402
from ultralytics.utils.torch_utils import get_flops  # noqa: E402


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
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def train(args: argparse.Namespace) -> tuple[YOLO, dict]:
    model = YOLO(f"{args.model}.yaml")
    t0 = time.perf_counter()
    # val=False: no per-epoch validation inside the budget (Ultralytics still validates after the last epoch);
    # scoring is done by tools/race.py with pycocotools, the same scorer for every contestant.
    model.train(data=args.data, imgsz=args.img, epochs=1000, time=args.time_h, batch=args.batch, device="cpu",
                workers=args.workers, seed=args.seed, deterministic=True, val=False, plots=False, amp=False,
                project=str(args.out.resolve()), name="train", exist_ok=True, verbose=False)
    wall = time.perf_counter() - t0
    epochs = len((args.out / "train" / "results.csv").read_text().strip().splitlines()) - 1
    return YOLO(str(args.out / "train" / "weights" / "last.pt")), {"train_wall_s": wall, "epochs": epochs}


def predict(model: YOLO, args: argparse.Namespace, index: dict) -> list[dict]:
    """Val detections as COCO results; Ultralytics' own val settings (conf 0.001, iou 0.7, max_det 300)."""
    results = []
    for file, image_id in index["images"].items():
        pred = model.predict(file, imgsz=args.img, conf=0.001, iou=0.7, max_det=300, device="cpu", verbose=False)[0]
        for (x1, y1, x2, y2), score, cls in zip(pred.boxes.xyxy.tolist(), pred.boxes.conf.tolist(),
                                                pred.boxes.cls.tolist()):
            results.append({"image_id": image_id, "category_id": index["category_ids"][int(cls)],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


@torch.inference_mode()
def latency_ms(net: torch.nn.Module, img: int, with_nms: bool, conf: float, iou: float, repeats: int = 30) -> float:
    """Median bs1 latency of the fused model (channels_last), optionally with Ultralytics' NMS."""
    x = torch.rand(1, 3, img, img).contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(repeats + 5):
        t0 = time.perf_counter()
        out = net(x)
        if with_nms:
            non_max_suppression(out, conf_thres=conf, iou_thres=iou, max_det=300)
        if i >= 5:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_file = args.out / "summary.json"
    if args.latency_only:
        summary = json.loads(summary_file.read_text())
        net = YOLO(str(args.out / "train" / "weights" / "last.pt")).model.float().fuse().eval()
        net = net.to(memory_format=torch.channels_last)
        summary["latency_ms"] = {str(s): {"forward": latency_ms(net, s, False, args.nms_conf, args.nms_iou),
                                          "with_nms": latency_ms(net, s, True, args.nms_conf, args.nms_iou)}
                                 for s in args.latency_img}
        summary["latency_threads"] = args.threads
    else:
        if not (args.data and args.val_index and args.time_h):
            raise SystemExit("training needs --data, --val-index and --time-h")
        model, summary = train(args)
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
