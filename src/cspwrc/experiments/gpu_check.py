"""The GPU measurement of issue 15 in one run (< 8 min on one H200): start with tools/gpu_check.sh.

Steps (each in its own process with its own time limit; a failing step is recorded, the others still run):

1. ``train_bs16``: cspwrc training throughput (img/s of the train loop: data + step, per epoch, median after
   the warm-up epochs) on coco128 (all 128 images, ``configs/det/coco128_memorize.yaml``: augmentation off) at
   640, batch 16, RAM cache, ``data.workers: auto``; plus start-up time (process start to the start of epoch 1's
   train loop). The numbers come from a training callback (the worker :mod:`cspwrc.experiments.gpu_train`).
2. ``train_bs64``: the same at batch 64 on coco128 repeated 8 times (16 steps an epoch), with the GPU
   utilisation sampled by ``nvidia-smi`` between the end of epoch 1 and the last epoch.
3. ``ultralytics``: YOLOv8s from ``yolov8s.yaml`` (no download) on the same 128 images, same size, batch,
   workers, epochs, RAM cache, augmentation off; epochs timed from ``on_train_epoch_start`` to
   ``on_train_epoch_end`` (the same span as step 1; the worker :mod:`cspwrc.experiments.gpu_ultralytics`). Skipped,
   with the reason, when ultralytics is not importable.
4. ``bench_*``: ``cspwrc benchmark`` (tools/benchmark.py) on the GPU: cspwrc_s backbone bs1@640 (eager ..
   folded+channels_last+fp16+cudagraph), bs32@640 (fp16/bf16, channels_last), the detector incl. NMS bs1@640.
5. ``startup_profile``: cProfile of building the trainer (data checks, datasets, model) on coco128 at 640 (the
   worker :mod:`cspwrc.experiments.startup_profile`).

Every step is a child process (``python -m cspwrc.cli ...`` or a worker module, :mod:`cspwrc.experiments.procs`).

Writes ``summary.json`` (every number, each step's command, return code and seconds), ``log.txt`` (all output)
and ``startup_profile.txt`` into ``--out`` (default ``$OUT``, else ``runs/gpu_check``; relative paths from the
current folder, the checkout root under tools/gpu_check.sh): three files, what the
device tool brings back. ``--dry-run`` runs every step tiny on the CPU (cspwrc_n at 64 px, 2 epochs; the GPU-only
benchmark modes are skipped with their reason; Ultralytics runs tiny too where it is importable), so the script is
known to work end to end without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from cspwrc.experiments.procs import UtilSampler, capture, stream

CLI = [sys.executable, "-m", "cspwrc.cli"]  # the installed commands, run from this python
COCO128_PLACES = (Path(".gpu_carry") / "coco128", Path("..") / "shared" / "data" / "coco128")
EPOCH_MARKER = "EPOCH "  # a line of the gpu_train worker: the marker, then one epoch's numbers as JSON
WARMUP_EPOCHS = 2  # epochs left out of the median: cuDNN autotuning, allocator growth, first worker batches


class Run:
    """Settings of the full GPU run, or of the tiny CPU dry run."""

    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.img = 64 if dry else 640
        self.batch, self.big_batch, self.repeat = (4, 8, 2) if dry else (16, 64, 8)
        self.epochs, self.big_epochs = (3, 3) if dry else (30, 8)
        self.model = "cspwrc_n" if dry else "cspwrc_s"
        self.limits = {"train_bs16": 240, "train_bs64": 240, "ultralytics": 300, "bench": 240,
                       "startup_profile": 120} if dry else {"train_bs16": 90, "train_bs64": 80, "ultralytics": 120,
                                                             "bench": 50, "startup_profile": 40}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or Path("runs") / "gpu_check"))
    p.add_argument("--coco128", type=Path, default=None,
                   help="coco128 folder (images/, labels/, annotations/); default .gpu_carry/coco128, else "
                        "../shared/data/coco128")
    p.add_argument("--dry-run", action="store_true", help="every step tiny on the CPU (no GPU needed)")
    p.add_argument("--steps", nargs="+", default=None, help="run only these steps (names as in summary.json)")
    args = p.parse_args(argv)
    run = Run(args.dry_run)
    args.out.mkdir(parents=True, exist_ok=True)
    coco = args.coco128 or next((c for c in COCO128_PLACES if (c / "annotations").is_dir()), None)
    if coco is None:
        print("coco128 not found: run tools/gpu_carry.sh first or pass --coco128", file=sys.stderr)
        return 2
    log = (args.out / "log.txt").open("w")
    summary: dict[str, Any] = {"dry_run": run.dry, "env": environment(), "steps": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        data16, data64, names = prepare_data(coco, work, run.repeat)
        steps = {
            "train_bs16": lambda: train_step(run, data16, run.batch, run.epochs, work / "bs16", log,
                                             run.limits["train_bs16"], sample=False),
            "train_bs64": lambda: train_step(run, data64, run.big_batch, run.big_epochs, work / "bs64", log,
                                             run.limits["train_bs64"], sample=not run.dry),
            "ultralytics": lambda: ultralytics_step(run, coco, names, work, log),
            "bench_backbone_bs1": lambda: bench_step(run, log, work, "backbone", 1, [
                "eager", "folded+channels_last", "folded+channels_last+fp16", "folded+channels_last+bf16",
                "folded+fp16+cudagraph", "folded+channels_last+fp16+cudagraph"]),
            "bench_backbone_bs32": lambda: bench_step(run, log, work, "backbone", 32 if not run.dry else 2, [
                "folded+channels_last", "folded+channels_last+fp16", "folded+channels_last+bf16",
                "folded+channels_last+fp16+cudagraph"]),
            "bench_detector_bs1": lambda: bench_step(run, log, work, "detector", 1, [
                "folded+channels_last", "folded+channels_last+fp16", "folded+channels_last+fp16+cudagraph"]),
            "startup_profile": lambda: startup_profile(run, data16, work, args.out / "startup_profile.txt", log),
        }
        for name, step in steps.items():
            if args.steps and name not in args.steps:
                continue
            t0 = time.perf_counter()
            try:
                result = step()
            except Exception as exc:  # any: one broken step must not lose the others' numbers
                result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            result["seconds"] = round(time.perf_counter() - t0, 1)
            summary["steps"][name] = result
            print(f"== {name}: {short(result)}", flush=True)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=1))  # partial results survive a kill
    summary["targets"] = targets(summary["steps"])
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["targets"], indent=1))
    log.close()
    return 0


# ------------------------------------------------------------------------------------------------ helpers
def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    env["nvidia_smi"] = capture(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                 "--format=csv,noheader"])
    env["torch"] = capture([sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda, "
                            "torch.backends.cudnn.version())"])
    return env


def short(result: dict[str, Any]) -> str:
    keys = ("status", "error", "median_img_s", "gpu_util_median_pct", "startup_s", "rc", "seconds")
    return ", ".join(f"{k}={result[k]}" for k in keys if k in result)


def prepare_data(coco: Path, work: Path, repeat: int) -> tuple[Path, Path, list[str]]:
    """Data YAMLs of all 128 images (train = val, as the memorisation recipe) and of them repeated ``repeat``x."""
    anns = [str(coco / "annotations" / f"instances_{s}.json") for s in ("train", "val")]
    merged = work / "coco128_all.json"
    subprocess.run([*CLI, "merge", *anns, "--out", str(merged)], check=True, capture_output=True)
    data = json.loads(merged.read_text())
    images, annotations = [], []
    for k in range(repeat):  # distinct ids, the same files: k x the steps per epoch, same pixels
        offset = k * 10**12
        images += [{**im, "id": im["id"] + offset} for im in data["images"]]
        annotations += [{**a, "id": a["id"] + offset, "image_id": a["image_id"] + offset} for a in data["annotations"]]
    repeated = work / "coco128_x.json"
    repeated.write_text(json.dumps({**data, "images": images, "annotations": annotations}))
    yamls = []
    for name, ann in (("all", merged), ("x", repeated)):
        path = work / f"coco128_{name}.yaml"
        path.write_text(f"train: {{ann: {ann}, images: {coco / 'images'}}}\nval: {{ann: {merged}, images: "
                        f"{coco / 'images'}}}\n")
        yamls.append(path)
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    return yamls[0], yamls[1], names


# ------------------------------------------------------------------------------------------------ steps
def train_step(run: Run, data: Path, batch: int, epochs: int, out: Path, log: IO[str], limit: float, sample: bool
               ) -> dict[str, Any]:
    """cspwrc training; img/s per epoch from the worker's callback lines; GPU utilisation sampled if ``sample``.

    ``epochs``: per epoch its number, train-loop ``seconds`` and ``img_s`` (the trainer's, as in its log line) and
    ``at_s``, when its line arrived (after the epoch's checkpoint). ``startup_s``: from starting the process to the
    start of epoch 1's train loop.
    """
    cmd = [sys.executable, "-m", "cspwrc.experiments.gpu_train", "--config", "coco128_memorize",
           "--data", str(data), "--img", str(run.img), "--batch", str(batch), "--epochs", str(epochs),
           "--device", run.device, "--out", str(out), "--model", run.model, "--no-progress",
           "--set", "data.workers=auto", "--set", "data.cache=ram", "--set", f"train.eval_interval={epochs}"]
    if run.dry:
        cmd += ["--set", "model.neck.channels=[16,32,64]", "--set", "train.max_steps_per_epoch=2"]
    sampler = UtilSampler() if sample else None
    epochs_seen: list[dict[str, float]] = []
    started: list[float] = []  # when epoch 1's train loop started (unix time)
    spawned, start = time.time(), time.perf_counter()

    def on_line(line: str) -> None:
        if not line.startswith(EPOCH_MARKER):
            return
        epoch = json.loads(line[len(EPOCH_MARKER):])
        epochs_seen.append({"epoch": epoch["epoch"], "seconds": epoch["seconds"], "img_s": epoch["img_s"],
                            "at_s": time.perf_counter() - start})
        if not started:
            started.append(epoch["started_at"])
        if sampler is not None and epoch["epoch"] == 1:
            sampler.start()
        if sampler is not None and epoch["epoch"] == epochs:
            sampler.stop()

    rc, lines = stream(cmd, log, limit, on_line,
                       env={"PYTHONUNBUFFERED": "1"})
    if sampler is not None:
        sampler.stop()
    steady = [e["img_s"] for e in epochs_seen[WARMUP_EPOCHS:]] or [e["img_s"] for e in epochs_seen]
    result: dict[str, Any] = {"status": "ok" if rc == 0 else "failed", "rc": rc, "command": " ".join(cmd),
                              "epochs": epochs_seen, "median_img_s": statistics.median(steady) if steady else None,
                              "startup_s": round(started[0] - spawned, 1) if started else None,
                              "settings": [ln for ln in lines if "loader workers" in ln]}
    if sampler is not None:
        result.update(sampler.summary())
    return result


def ultralytics_step(run: Run, coco: Path, names: list[str], work: Path, log: IO[str]) -> dict[str, Any]:
    """YOLOv8s with Ultralytics on the same images (its own process: its imports and settings stay there)."""
    found = subprocess.run([sys.executable, "-c", "import ultralytics"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        reason = (found.stderr.strip().splitlines() or ["no error text"])[-1]
        return {"status": "skipped", "error": f"ultralytics not importable ({reason}); carry its wheels: "
                                              "tools/gpu_carry.sh"}
    data = work / "ultralytics.yaml"
    data.write_text(json.dumps({"path": str(coco), "train": "images", "val": "images",
                                "names": dict(enumerate(names))}))
    workers = str(min(8, max(1, (os.cpu_count() or 2) - 1)))  # what cspwrc's data.workers: auto picks on CUDA
    cmd = [sys.executable, "-m", "cspwrc.experiments.gpu_ultralytics", str(data), str(run.epochs), str(run.img),
           str(run.batch),
           workers, "cpu" if run.dry else "0", str(work / "ultralytics")]
    start = time.perf_counter()
    rc, lines = stream(cmd, log, run.limits["ultralytics"], env={"PYTHONUNBUFFERED": "1", "YOLO_OFFLINE": "1"})
    total = time.perf_counter() - start
    found_times = [json.loads(ln.split(" ", 1)[1]) for ln in lines if ln.startswith("EPOCH_SECONDS ")]
    if rc != 0 or not found_times:
        return {"status": "failed", "rc": rc, "error": "\n".join(lines[-5:])}
    images = len(list((coco / "images").glob("*.jpg")))
    steady = found_times[0][WARMUP_EPOCHS:] or found_times[0]
    return {"status": "ok", "rc": rc, "epoch_seconds": found_times[0], "images_per_epoch": images,
            "median_img_s": images / statistics.median(steady), "wall_s": round(total, 1), "workers": int(workers)}


def bench_step(run: Run, log: IO[str], work: Path, target: str, batch: int, modes: list[str]) -> dict[str, Any]:
    out = work / f"bench_{target}_{batch}.json"
    cmd = [*CLI, "benchmark", "--models", run.model, "--img", str(run.img),
           "--batch", str(batch), "--device", run.device, "--modes", *modes, "--json", str(out)]
    cmd += ["--detector-only"] if target == "detector" else []
    cmd += (["--warmup", "1", "--iters", "2", "--min-iters", "1", "--peak-size", "256"] if run.dry else
            ["--warmup", "10", "--iters", "300", "--max-seconds", "2", "--min-iters", "20", "--peak-size", "8192"])
    rc, _ = stream(cmd, log, run.limits["bench"])
    if rc != 0 or not out.is_file():
        return {"status": "failed", "rc": rc}
    report = json.loads(out.read_text())
    rows = [{k: r[k] for k in ("target", "model", "mode", "batch", "img", "precision", "latency_ms_median",
                               "throughput_img_s", "peak_pct", "status", "error")} for r in report["results"]]
    return {"status": "ok", "rc": rc, "command": " ".join(cmd), "rows": rows,
            "matmul_peaks_gflop_s": report["matmul_peaks_gflop_s"], "env": report["env"]}


def startup_profile(run: Run, data: Path, work: Path, out: Path, log: IO[str]) -> dict[str, Any]:
    """cProfile of ``Trainer(cfg)`` (data checks, RAM cache, datasets, model build): where start-up time goes."""
    cmd = [sys.executable, "-m", "cspwrc.experiments.startup_profile", "--data", str(data), "--model", run.model,
           "--img", str(run.img), "--batch", str(run.batch), "--device", run.device, "--out", str(work / "profile"),
           "--stats", str(out), "--spawned-at", repr(time.time())]
    rc, lines = stream(cmd, log, run.limits["startup_profile"])
    timing = [ln for ln in lines if ln.startswith("imports")]
    return {"status": "ok" if rc == 0 else "failed", "rc": rc, "timing": timing}


def targets(steps: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets next to the measured numbers (None where a step did not produce one)."""
    def row(step: str, mode: str) -> dict[str, Any] | None:
        rows = steps.get(step, {}).get("rows", [])
        return next((r for r in rows if r["mode"] == mode and r["status"] == "ok"), None)

    ours, theirs = (steps.get(k, {}).get("median_img_s") for k in ("train_bs16", "ultralytics"))
    bs1, bs32 = row("bench_backbone_bs1", "folded+channels_last+fp16+cudagraph"), row("bench_backbone_bs32",
                                                                                       "folded+channels_last+fp16")
    det = row("bench_detector_bs1", "folded+channels_last+fp16+cudagraph")
    return {
        "train_img_s_vs_ultralytics (>= 1.5)": round(ours / theirs, 2) if ours and theirs else None,
        "train_img_s": ours, "ultralytics_img_s": theirs,
        "gpu_util_bs64_median_pct (>= 80)": steps.get("train_bs64", {}).get("gpu_util_median_pct"),
        "startup_s_bs16": steps.get("train_bs16", {}).get("startup_s"),
        "backbone_bs1_ms_fp16_cudagraph (<= 0.6)": bs1 and bs1["latency_ms_median"],
        "backbone_bs32_img_s_fp16_channels_last (>= 15000)": bs32 and bs32["throughput_img_s"],
        "detector_bs1_ms_incl_nms (<= 2)": det and det["latency_ms_median"],
    }
