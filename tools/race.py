#!/usr/bin/env python3
"""The race (issue 14): cspwrc detectors against Ultralytics YOLO on the same data, image size, threads and budget.

Every contestant trains from scratch on the train split of a COCO data YAML for the same wall-clock budget
(``--minutes``; ours with ``train.time``, Ultralytics with its own ``time=``), with the same image size, batch,
thread count and loader workers, and is scored by the same pycocotools COCOeval on the val split. Then each one's
bs1 latency is measured at ``--latency-img`` sizes with ``--latency-threads`` threads (2, the issue's deployment
case, whatever the training threads) in one quiet phase, one contestant at a time, by the same timing
loop, with and without NMS (deployment thresholds for both: score 0.25, IoU 0.7): ours folded + channels_last,
Ultralytics fused + channels_last.

    python tools/race.py --data configs/data/shwd.yaml --img 320 --minutes 60 --threads 2 \
        --contestants cspwrc_s cspwrc_n ultralytics:yolov8n ultralytics:yolo11n \
        --ultralytics-python /path/to/ultra-venv/bin/python --out runs/race

A contestant is ``MODEL`` (a cspwrc detector backbone trained with the real-data recipe, configs/det/real.yaml; add
recipe flags for all of ours with ``--ours-args "..."``) or ``ultralytics:MODEL`` (built from Ultralytics' own
``MODEL.yaml``, its default recipe). Ultralytics is a measuring stick, never a dependency: it runs in its own venv
(``python -m venv ultra && ultra/bin/pip install ultralytics``) through tools/race_ultralytics.py.

``--parallel`` trains all contestants at once (each with ``--threads`` threads): on a machine shared with other
work, every contestant then sees the same load; without it they run one after the other. A contestant whose
``summary.json`` exists is not trained again, so an interrupted race continues; ``--report-only`` only tabulates.
Results: OUT/race.md and OUT/race.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO

from cspwrc.atomic import write_bytes, write_json
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.data.config import load_data_config
from cspwrc.deploy.cost import model_cost
from cspwrc.engine.checkpoint import load_detector
from cspwrc.engine.evaluate import coco_evaluate
from cspwrc.errors import InputError
from cspwrc.layers import fold_model

ROOT = Path(__file__).resolve().parents[1]
ULTRA = "ultralytics:"
# NMS settings of the latency phase, the same for every contestant: Ultralytics' predict defaults (a deployed
# detector keeps confident boxes; the val-time 0.001 threshold would time NMS on thousands of boxes).
LATENCY_CONF, LATENCY_IOU = 0.25, 0.7


# ------------------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="COCO data YAML (train/val ann + images)")
    p.add_argument("--contestants", nargs="+", default=["cspwrc_s", f"{ULTRA}yolov8n", f"{ULTRA}yolo11n"])
    p.add_argument("--img", type=int, default=320)
    p.add_argument("--minutes", type=float, default=60.0, help="training budget per contestant (wall clock)")
    p.add_argument("--threads", type=int, default=2, help="compute threads per contestant")
    p.add_argument("--workers", type=int, default=2, help="data loader worker processes per contestant")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ours-args", default="", help="extra cspwrc train flags for all of ours, e.g. \"--set ...\"")
    p.add_argument("--ultralytics-python", default=None, help="python of a venv with ultralytics installed")
    p.add_argument("--latency-img", type=int, nargs="*", default=[320, 640],
                   help="bs1 latency sizes; none (a bare --latency-img) skips the phase, to time later in quiet")
    p.add_argument("--latency-threads", type=int, default=2,
                   help="threads of the latency phase (a latency timed with other threads is timed again)")
    p.add_argument("--parallel", action="store_true", help="train all contestants at the same time")
    p.add_argument("--report-only", action="store_true", help="train and time nothing: tabulate finished results")
    p.add_argument("--out", type=Path, default=Path("runs/race"))
    add_debug_flag(p)
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be wrong with the flags, found before anything trains (InputError, exit 2)."""
    if args.img <= 0 or args.img % 32:
        raise InputError(f"--img {args.img}: must be a positive multiple of 32")
    for flag in ("minutes", "threads", "latency_threads", "batch"):
        if getattr(args, flag) <= 0:
            raise InputError(f"--{flag} {getattr(args, flag)}: must be positive")
    if args.workers < 0:
        raise InputError(f"--workers {args.workers}: must be >= 0")
    if len(set(args.contestants)) != len(args.contestants):
        raise InputError(f"--contestants {args.contestants}: a contestant is named twice")
    for name in args.contestants:
        if name.startswith(ULTRA) and not name[len(ULTRA):]:
            raise InputError(f"--contestants {name!r}: expected ultralytics:MODEL, e.g. ultralytics:yolov8n")
    if any(c.startswith(ULTRA) for c in args.contestants) and not args.report_only:
        python = args.ultralytics_python
        if not python or not Path(python).is_file():
            raise InputError(f"--ultralytics-python {python!r}: not a file; Ultralytics contestants run in their own "
                             "venv (python -m venv ultra && ultra/bin/pip install ultralytics)")
    cfg = load_data_config(args.data)
    if any(getattr(split, key) is not None for split in (cfg.train, cfg.val) for key in ("num_images", "image_ids")) \
            or cfg.categories is not None:
        raise InputError(f"{args.data}: the race takes whole splits with all classes (no num_images, image_ids or "
                         "categories), so that every contestant sees the same images and boxes")


def run_name(contestant: str) -> str:
    return contestant.replace(":", "_")


# ------------------------------------------------------------------------------------------ data for Ultralytics


def quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        return COCO(str(path))


def yolo_view(data_yaml: str, folder: Path) -> tuple[Path, Path]:
    """An Ultralytics data set of symlinks to the COCO images plus YOLO labels made from the same annotations.

    Labels: one ``class cx cy w h`` line per box (normalised to the image, class = index in category-id order,
    crowd boxes left out as COCOeval ignores them). Returns the data YAML and the val index that maps val files back
    to COCO image ids and class indices to category ids (for the detections of the Ultralytics side).
    """
    cfg = load_data_config(data_yaml)
    val_files: dict[str, int] = {}
    category_ids: list[int] = []
    for split, spec in (("train", cfg.train), ("val", cfg.val)):
        if not spec.ann.is_file():
            raise InputError(f"{spec.ann}: no such annotation file")
        coco = quiet_coco(spec.ann)
        ids = sorted(coco.getCatIds())
        if category_ids and ids != category_ids:
            raise InputError(f"{spec.ann}: categories {ids} differ from train's {category_ids}")
        category_ids = ids
        cls_of = {c: i for i, c in enumerate(ids)}
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
        for image in coco.loadImgs(sorted(coco.getImgIds())):
            src = (spec.images / image["file_name"]).resolve()
            link = folder / "images" / split / Path(image["file_name"]).name
            if not link.is_symlink():
                link.symlink_to(src)
            w, h = image["width"], image["height"]
            lines = [f"{cls_of[a['category_id']]} {(a['bbox'][0] + a['bbox'][2] / 2) / w:.6f} "
                     f"{(a['bbox'][1] + a['bbox'][3] / 2) / h:.6f} {a['bbox'][2] / w:.6f} {a['bbox'][3] / h:.6f}"
                     for a in coco.loadAnns(coco.getAnnIds(imgIds=image["id"], iscrowd=False))
                     if a["bbox"][2] > 0 and a["bbox"][3] > 0]
            (folder / "labels" / split / f"{link.stem}.txt").write_text("".join(f"{line}\n" for line in lines))
            if split == "val":
                val_files[str(link)] = int(image["id"])
    names = [c["name"] for c in coco.loadCats(category_ids)]  # coco: val's, the loop's last split
    data = folder / "data.yaml"
    data.write_text(json.dumps({"path": str(folder.resolve()), "train": "images/train", "val": "images/val",
                                "names": names}))  # JSON is YAML
    index = folder / "val_index.json"
    write_json(index, {"images": val_files, "category_ids": category_ids})
    return data, index


# ------------------------------------------------------------------------------------------ training


def thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def ours_command(args: argparse.Namespace, model: str, out: Path) -> list[str]:
    """The user's command: the real-data recipe, the shared budget; scored once at the end (eval inside the
    budget would cost ours time the Ultralytics side, trained with val=False, does not spend)."""
    return [sys.executable, "-m", "cspwrc.cli", "train", "--data", str(args.data), "--model", model,
            "--img", str(args.img), "--batch", str(args.batch), "--workers", str(args.workers),
            "--seed", str(args.seed), "--time", f"{args.minutes / 60:.6f}", "--epochs", "1000",
            "--set", "train.eval_interval=100000", "--out", str(out), "--exist-ok", "--no-progress",
            *shlex.split(args.ours_args)]


def ultralytics_command(args: argparse.Namespace, model: str, out: Path, data: Path, index: Path) -> list[str]:
    return [args.ultralytics_python, str(ROOT / "tools" / "race_ultralytics.py"), "--model", model,
            "--data", str(data), "--val-index", str(index), "--img", str(args.img),
            "--time-h", f"{args.minutes / 60:.6f}", "--threads", str(args.threads), "--workers", str(args.workers),
            "--batch", str(args.batch), "--seed", str(args.seed), "--latency-img", *map(str, args.latency_img),
            "--out", str(out)]


def start(contestant: str, args: argparse.Namespace, yolo: tuple[Path, Path] | None) -> subprocess.Popen:
    out = args.out / run_name(contestant)
    out.mkdir(parents=True, exist_ok=True)
    if contestant.startswith(ULTRA):
        cmd = ultralytics_command(args, contestant[len(ULTRA):], out, *yolo)
    else:
        cmd = ours_command(args, contestant, out / "train")
    write_json(out / "command.json", {"command": cmd, "started": time.time()})
    print(f"{contestant}: {shlex.join(cmd)}", flush=True)
    log = open(out / "train.log", "w")  # noqa: SIM115 - the child writes it until it ends
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=thread_env(args.threads))


def finish_ours(contestant: str, args: argparse.Namespace, wall_s: float) -> None:
    """Val detections of our last checkpoint (``cspwrc val``, the trainer's own eval settings) and the summary."""
    out = args.out / run_name(contestant)
    metrics = json.loads((out / "train" / "metrics.json").read_text())
    cfg = load_data_config(args.data)
    cmd = [sys.executable, "-m", "cspwrc.cli", "val", "--weights", str(out / "train" / "last.safetensors"),
           "--ann", str(cfg.val.ann), "--images", str(cfg.val.images), "--out", str(out / "detections.json"),
           "--no-progress"]
    subprocess.run(cmd, check=True, env=thread_env(args.threads), stdout=subprocess.DEVNULL)
    params_m, gflops = model_cost(load_detector(out / "train" / "last.safetensors")[0], args.img)
    write_json(out / "summary.json", {"model": contestant, "params_m": params_m,
                                      "gflops_at_img": gflops, "img": args.img, "epochs": metrics["epochs"],
                                      "train_wall_s": wall_s, "train_time_s": metrics["train_time_s"]})


def train_all(args: argparse.Namespace) -> None:
    todo = [c for c in args.contestants if not (args.out / run_name(c) / "summary.json").is_file()]
    yolo = yolo_view(args.data, args.out / "yolo_data") if any(c.startswith(ULTRA) for c in todo) else None
    for group in [todo] if args.parallel else [[c] for c in todo]:
        running = {c: (start(c, args, yolo), time.perf_counter()) for c in group}
        while running:
            time.sleep(1.0)
            for contestant, (proc, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[contestant]
                if proc.returncode != 0:
                    raise InputError(f"{contestant}: training failed (exit {proc.returncode}); see "
                                     f"{args.out / run_name(contestant) / 'train.log'}")
                if not contestant.startswith(ULTRA):
                    finish_ours(contestant, args, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ latency


@torch.inference_mode()
def latency_ms(fn: Any, x: torch.Tensor, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of ``fn(x)`` (the same loop as tools/race_ultralytics.py)."""
    times = []
    for i in range(repeats + warmup):
        t0 = time.perf_counter()
        fn(x)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_latency(args: argparse.Namespace) -> None:
    """Quiet phase, one contestant at a time: ours here; Ultralytics' in its venv (the child's --latency-only)."""
    if not args.latency_img:
        return
    torch.set_num_threads(args.latency_threads)
    for contestant in args.contestants:
        out = args.out / run_name(contestant)
        summary = json.loads((out / "summary.json").read_text())
        if summary.get("latency_threads") == args.latency_threads and \
                set(map(str, args.latency_img)) <= set(summary.get("latency_ms", {})):
            continue
        if contestant.startswith(ULTRA):
            cmd = [args.ultralytics_python, str(ROOT / "tools" / "race_ultralytics.py"), "--latency-only",
                   "--model", contestant[len(ULTRA):], "--threads", str(args.latency_threads),
                   "--nms-conf", str(LATENCY_CONF), "--nms-iou", str(LATENCY_IOU),
                   "--latency-img", *map(str, args.latency_img), "--out", str(out)]
            subprocess.run(cmd, check=True, env=thread_env(args.latency_threads))
            continue
        model, _ = load_detector(out / "train" / "last.safetensors")
        net = fold_model(model.eval()).to(memory_format=torch.channels_last)
        net.cfg.score_thresh, net.cfg.nms_iou = LATENCY_CONF, LATENCY_IOU
        inputs = {s: torch.rand(1, 3, s, s).contiguous(memory_format=torch.channels_last) for s in args.latency_img}
        summary["latency_ms"] = {str(s): {"forward": latency_ms(net.forward_raw, x), "with_nms": latency_ms(net, x)}
                                 for s, x in inputs.items()}
        summary["latency_threads"] = args.latency_threads
        write_json(out / "summary.json", summary)


# ------------------------------------------------------------------------------------------ report


def score(args: argparse.Namespace) -> list[dict[str, Any]]:
    """pycocotools on the val annotation file, the same for every contestant."""
    gt = quiet_coco(load_data_config(args.data).val.ann)
    rows = []
    for contestant in args.contestants:
        out = args.out / run_name(contestant)
        if not (out / "summary.json").is_file():
            continue
        summary = json.loads((out / "summary.json").read_text())
        result = coco_evaluate(gt, json.loads((out / "detections.json").read_text()))
        rows.append({"contestant": contestant, **summary, "map": result.map, "map50": result.map50})
    return rows


def race_table(rows: list[dict[str, Any]], latency_img: list[int]) -> str:
    head = ["contestant", "params (M)", "GFLOPs@img", "epochs", "train wall (s)", "mAP@[.5:.95]", "AP50",
            *(f"bs1@{s} ms" for s in latency_img), "latency threads"]  # no empty column when latency is skipped
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lat = r.get("latency_ms", {})
        cells = []
        for s in latency_img:
            entry = lat.get(str(s), {})
            cells.append(f"{entry['with_nms']:.1f}" + (f" ({entry['forward']:.1f} w/o NMS)" if "forward" in entry
                                                         else "") if entry else "–")
        row = [r["contestant"], f"{r['params_m']:.2f}", f"{r['gflops_at_img']:.2f}", str(r["epochs"]),
               f"{r['train_wall_s']:.0f}", f"{r['map']:.4f}", f"{r['map50']:.4f}", *cells,
               str(r.get("latency_threads", "–"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        train_all(args)
        measure_latency(args)
    rows = score(args)
    if not rows:
        raise InputError(f"{args.out}: no finished contestant")
    text = race_table(rows, args.latency_img)
    write_bytes(args.out / "race.md", (text + "\n").encode())
    write_json(args.out / "race.json", [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                         for k, v in r.items()} for r in rows])
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
