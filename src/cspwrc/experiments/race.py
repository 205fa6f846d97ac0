"""The race (issue 14): cspwrc detectors against Ultralytics YOLO on the same data, image size, threads and budget.

Every contestant trains from scratch on the train split of a COCO data YAML for the same wall-clock budget
(``--minutes``; ours with ``train.time``, Ultralytics with its own ``time=``), with the same image size, batch,
thread count and loader workers, and is scored by the same pycocotools COCOeval on the val split. Then each one's
bs1 latency is measured at ``--latency-img`` sizes with ``--latency-threads`` threads (2, the issue's deployment
case, whatever the training threads) in one quiet phase, one contestant at a time, by the same timing
loop, with and without NMS (deployment thresholds for both: score 0.25, IoU 0.7), in PyTorch (ours folded +
channels_last, Ultralytics fused + channels_last) and in ONNX Runtime (ours: the `cspwrc export` / `--nms` graphs;
Ultralytics: its ONNX export, where onnx/onnxruntime are in its venv). An NMS-free end-to-end head (YOLO26) is
timed without NMS, and said so. Each summary records the optimizer the contestant really trained with (read back
from its run: Ultralytics' optimizer=auto picks its own).

    python tools/race.py --data configs/data/shwd.yaml --img 320 --minutes 60 --threads 2 \\
        --contestants cspwrc_s cspwrc_n ultralytics:yolov8n ultralytics:yolo11n \\
        --ultralytics-python /path/to/ultra-venv/bin/python --out runs/race

A contestant is ``MODEL`` (a cspwrc detector backbone trained with the real-data recipe, configs/det/real.yaml; add
recipe flags for all of ours with ``--ours-args "..."``) or ``ultralytics:MODEL`` (built from Ultralytics' own
``MODEL.yaml``, its default recipe). Ultralytics is a measuring stick, never a dependency: it runs in its own venv
(``python -m venv ultra && ultra/bin/pip install ultralytics``) through tools/race_ultralytics.py.

``--parallel`` trains all contestants at once (each with ``--threads`` threads): on a machine shared with other
work, every contestant then sees the same load; without it they run one after the other. An interrupted race
continues where it stopped: a contestant whose ``summary.json`` exists is not trained again, and one with a saved
training state resumes it (ours ``cspwrc train --resume``, whose time budget counts the training time already
spent; Ultralytics' ``resume=True``, which keeps its planned epochs); ``--report-only`` only tabulates.
Results: OUT/race.md and OUT/race.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import torch

from cspwrc.atomic import write_bytes, write_json
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.data.config import load_data_config
from cspwrc.deploy.cost import model_cost
from cspwrc.det.load import load_detector
from cspwrc.errors import InputError
from cspwrc.experiments.latency import LATENCY_CONF, LATENCY_IOU, latency_done, time_ours
from cspwrc.experiments.optimizers import ours_optimizer, ultralytics_optimizer
from cspwrc.experiments.race_data import yolo_view
from cspwrc.experiments.race_report import race_table, score

ULTRA = "ultralytics:"
# The measuring stick's side is a script of the source checkout, run by the Ultralytics venv's python (that venv
# has no cspwrc): src/cspwrc/experiments/race.py -> the checkout's tools/.
ULTRA_SCRIPT = Path(__file__).resolve().parents[3] / "tools" / "race_ultralytics.py"


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
    p.add_argument("--newton-schulz", choices=("auto", "bf16", "fp32"), default="auto",
                   help="Ultralytics' MuSGD Newton-Schulz dtype: auto = fp32 where this CPU has no fast bf16 matmul "
                        "(tools/race_ultralytics.py times both first and records it)")
    p.add_argument("--parallel", action="store_true", help="train all contestants at the same time")
    p.add_argument("--report-only", action="store_true", help="train and time nothing: tabulate finished results")
    p.add_argument("--out", type=Path, default=Path("runs/race"))
    add_debug_flag(p)
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be wrong with the flags, found before anything trains (InputError, exit 2)."""
    _check_numbers(args)
    _check_contestants(args)
    _check_race_data(args.data)


def _check_numbers(args: argparse.Namespace) -> None:
    if args.img <= 0 or args.img % 32:
        raise InputError(f"--img {args.img}: must be a positive multiple of 32")
    for flag in ("minutes", "threads", "latency_threads", "batch"):
        if getattr(args, flag) <= 0:
            raise InputError(f"--{flag} {getattr(args, flag)}: must be positive")
    if args.workers < 0:
        raise InputError(f"--workers {args.workers}: must be >= 0")


def _check_contestants(args: argparse.Namespace) -> None:
    """Distinct, well-formed names; Ultralytics contestants need their venv's python and the script it runs."""
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
        if not ULTRA_SCRIPT.is_file():
            raise InputError(f"{ULTRA_SCRIPT}: not found; Ultralytics contestants need a source checkout of cspwrc")


def _check_race_data(data: str) -> None:
    cfg = load_data_config(data)
    if any(getattr(split, key) is not None for split in (cfg.train, cfg.val) for key in ("num_images", "image_ids")) \
            or cfg.categories is not None:
        raise InputError(f"{data}: the race takes whole splits with all classes (no num_images, image_ids or "
                         "categories), so that every contestant sees the same images and boxes")


def run_name(contestant: str) -> str:
    return contestant.replace(":", "_")


def thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


# ------------------------------------------------------------------------------------------ training


def ours_command(args: argparse.Namespace, model: str, out: Path) -> list[str]:
    """The user's command: the real-data recipe, the shared budget; scored once at the end (eval inside the
    budget would cost ours time the Ultralytics side, trained with val=False, does not spend)."""
    return [sys.executable, "-m", "cspwrc.cli", "train", "--data", str(args.data), "--model", model,
            "--img", str(args.img), "--batch", str(args.batch), "--workers", str(args.workers),
            "--seed", str(args.seed), "--time", f"{args.minutes / 60:.6f}", "--epochs", "1000",
            "--set", "train.eval_interval=100000", "--out", str(out), "--exist-ok", "--no-progress",
            *shlex.split(args.ours_args)]


def ours_resume_command(out: Path) -> list[str]:
    """Continue an interrupted run with its saved config (seed, budget and recipe included)."""
    return [sys.executable, "-m", "cspwrc.cli", "train", "--resume", str(out), "--no-progress"]


def ultralytics_command(args: argparse.Namespace, model: str, out: Path, data: Path, index: Path,
                        resume: bool = False) -> list[str]:
    return [args.ultralytics_python, str(ULTRA_SCRIPT), "--model", model,
            "--data", str(data), "--val-index", str(index), "--img", str(args.img),
            "--time-h", f"{args.minutes / 60:.6f}", "--threads", str(args.threads), "--workers", str(args.workers),
            "--batch", str(args.batch), "--seed", str(args.seed), "--latency-img", *map(str, args.latency_img),
            "--newton-schulz", args.newton_schulz, "--out", str(out),
            *(["--resume"] if resume else [])]


def ultralytics_latency_command(args: argparse.Namespace, model: str, out: Path) -> list[str]:
    return [args.ultralytics_python, str(ULTRA_SCRIPT), "--latency-only", "--model", model,
            "--threads", str(args.latency_threads), "--nms-conf", str(LATENCY_CONF), "--nms-iou", str(LATENCY_IOU),
            "--latency-img", *map(str, args.latency_img), "--out", str(out)]


def resumable(contestant: str, out: Path) -> bool:
    """Whether an interrupted contestant left a training state to continue from (OUT/NAME)."""
    state = out / "train" / ("weights/last.pt" if contestant.startswith(ULTRA) else "last.state.pt")
    return state.is_file()


def start(contestant: str, args: argparse.Namespace, yolo: tuple[Path, Path] | None
          ) -> tuple[subprocess.Popen, IO[str]]:
    """The contestant's training process, its output going to OUT/NAME/train.log (returned, for closing)."""
    out = args.out / run_name(contestant)
    out.mkdir(parents=True, exist_ok=True)
    resume = resumable(contestant, out)
    if contestant.startswith(ULTRA):
        cmd = ultralytics_command(args, contestant[len(ULTRA):], out, *yolo, resume=resume)
    else:
        cmd = ours_resume_command(out / "train") if resume else ours_command(args, contestant, out / "train")
    record, entry = out / "command.json", {"command": cmd, "started": time.time()}
    if resume:  # the first command stays; each resume is appended
        first = json.loads(record.read_text()) if record.is_file() else {}
        entry = {**first, "resumed": [*first.get("resumed", []), entry]}
    write_json(record, entry)
    print(f"{contestant}: {'resumed: ' if resume else ''}{shlex.join(cmd)}", flush=True)
    log = open(out / "train.log", "a" if resume else "w")  # no `with`: the child writes it until it ends
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=thread_env(args.threads)), log


def optimizer_of(contestant: str, out: Path) -> dict[str, Any] | None:
    """The optimizer a finished contestant really used (:mod:`cspwrc.experiments.optimizers`)."""
    return ultralytics_optimizer(out) if contestant.startswith(ULTRA) else ours_optimizer(out / "train")


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
                                      "train_wall_s": wall_s, "train_time_s": metrics["train_time_s"],
                                      "resumed": "resumed" in json.loads((out / "command.json").read_text()),
                                      "optimizer": optimizer_of(contestant, out)})


def finish_ultralytics(contestant: str, args: argparse.Namespace) -> None:
    """The child wrote detections and summary; the optimizer is read from its log and args (the child's own output
    is this process's train.log)."""
    out = args.out / run_name(contestant)
    summary = json.loads((out / "summary.json").read_text())
    write_json(out / "summary.json", {**summary, "optimizer": optimizer_of(contestant, out)})


def train_all(args: argparse.Namespace) -> None:
    todo = [c for c in args.contestants if not (args.out / run_name(c) / "summary.json").is_file()]
    yolo = yolo_view(args.data, args.out / "yolo_data") if any(c.startswith(ULTRA) for c in todo) else None
    for group in [todo] if args.parallel else [[c] for c in todo]:
        running = {c: (*start(c, args, yolo), time.perf_counter()) for c in group}
        while running:
            time.sleep(1.0)
            for contestant, (proc, log, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[contestant]
                log.close()
                if proc.returncode != 0:
                    raise InputError(f"{contestant}: training failed (exit {proc.returncode}); see "
                                     f"{args.out / run_name(contestant) / 'train.log'}")
                if contestant.startswith(ULTRA):
                    finish_ultralytics(contestant, args)
                else:
                    finish_ours(contestant, args, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ latency


def measure_latency(args: argparse.Namespace) -> None:
    """Quiet phase, one contestant at a time: ours here (:func:`cspwrc.experiments.latency.time_ours`);
    Ultralytics' in its venv (the child's --latency-only). A contestant already timed this way is skipped."""
    if not args.latency_img:
        return
    torch.set_num_threads(args.latency_threads)
    for contestant in args.contestants:
        out = args.out / run_name(contestant)
        summary = json.loads((out / "summary.json").read_text())
        if latency_done(summary, args.latency_img, args.latency_threads):
            continue
        if contestant.startswith(ULTRA):
            subprocess.run(ultralytics_latency_command(args, contestant[len(ULTRA):], out), check=True,
                           env=thread_env(args.latency_threads))
            continue
        summary.update(time_ours(out / "train" / "last.safetensors", args.latency_img, args.latency_threads))
        write_json(out / "summary.json", summary)


# ------------------------------------------------------------------------------------------ report


def run(args: argparse.Namespace) -> int:
    check_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        train_all(args)
        measure_latency(args)
    rows = score(args.data, {c: args.out / run_name(c) for c in args.contestants}, optimizer_of)
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
