"""Speed benchmark: cspwrc backbones/detectors vs timm peers (logic in cspwrc.deploy.benchmark and its modules;
the --train-step checks in cspwrc.experiments.train_bench).

Example (the command behind docs/deploy.md):
    python tools/benchmark.py --models cspwrc_s cs3darknet_s resnet18 --img 640 --batch 1 8 \
        --threads 2 --baseline cs3darknet_s --json bench.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cspwrc  # noqa: F401 - registers the cspwrc models with timm
from cspwrc.atomic import make_dir, write_json
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.deploy.benchmark import BenchSettings, run_benchmark
from cspwrc.deploy.exported import time_model
from cspwrc.deploy.modes import DEFAULT_MODES
from cspwrc.deploy.report import format_table
from cspwrc.engine.config import check_model_name
from cspwrc.experiments.train_bench import TrainBenchSettings, run_train_benchmark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cspwrc_s", "cs3darknet_s"], help="timm model names")
    p.add_argument("--img", nargs="+", type=int, default=[640], help="square input sizes")
    p.add_argument("--batch", nargs="+", type=int, default=[1], help="batch sizes")
    p.add_argument(
        "--modes",
        nargs="+",
        default=list(DEFAULT_MODES),
        help="eager, or '+'-joined flags of folded, channels_last, jit (trace+freeze+optimize_for_inference), "
        "compile (torch.compile, opt-in: slow to compile on few cores), ort (onnxruntime CPU); CUDA only: fp16, "
        "bf16 (half-precision weights and input), cudagraph (CUDA graph replay), "
        "e.g. folded+channels_last+fp16+cudagraph",
    )
    p.add_argument("--exported", nargs="+", type=Path, default=[], metavar="FILE",
                   help="also time these trained models at bs1 and their own input size, in their own runtime: "
                   "cspwrc checkpoints (.safetensors) or files `cspwrc export` wrote (.onnx, OpenVINO folders)")
    p.add_argument("--detector", action="store_true", help="also benchmark the full detector (incl. NMS)")
    p.add_argument("--detector-only", action="store_true", help="benchmark only the full detector")
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20, help="timed runs per configuration (upper bound)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="time budget per configuration")
    p.add_argument("--min-iters", type=int, default=3)
    p.add_argument("--baseline", default=None, help="model the ratios refer to, e.g. cs3darknet_s; "
                   "'peer': each cspwrc_X vs cs3darknet_X (n vs s)")
    p.add_argument("--baseline-mode", default="eager")
    p.add_argument("--peak-size", type=int, default=2048, help="n of the n x n sgemm measuring the peak")
    t = p.add_argument_group("training-side checks (--train-step)")
    t.add_argument("--train-step", action="store_true",
                   help="time detector fwd+bwd+AdamW step with WRC weights vs wrc_weights=none, and the data loader")
    t.add_argument("--skip-inference", action="store_true", help="only the --train-step part")
    t.add_argument("--train-model", default="cspwrc_s")
    t.add_argument("--train-img", type=int, default=TrainBenchSettings.img,
                   help="train step size (default: 256, the size of configs/det/default.yaml's step timings; the "
                   "recipe itself trains at 192)")
    t.add_argument("--train-batch", type=int, default=TrainBenchSettings.batch,
                   help="train step batch (default: 16, as those timings; the recipe trains at 8)")
    t.add_argument("--train-iters", type=int, default=10)
    t.add_argument("--data", default=None, help="data YAML for the loader (default: embedded shapes set)")
    t.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    add_debug_flag(p)
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    targets = ("detector",) if args.detector_only else ("backbone", "detector") if args.detector else ("backbone",)
    return BenchSettings(
        models=args.models,
        img=args.img,
        batch=args.batch,
        modes=args.modes,
        targets=targets,
        device=args.device,
        threads=args.threads,
        warmup=args.warmup,
        iters=args.iters,
        max_seconds=args.max_seconds,
        min_iters=args.min_iters,
        num_classes=args.num_classes,
        baseline=args.baseline,
        baseline_mode=args.baseline_mode,
        peak_size=args.peak_size,
    )


def train_settings_from_args(args: argparse.Namespace) -> TrainBenchSettings:
    return TrainBenchSettings(backbone=args.train_model, img=args.train_img, batch=args.train_batch,
                              num_classes=args.num_classes, iters=args.train_iters, data=args.data,
                              workers=args.workers)


def print_train_report(train: dict) -> None:
    steps = ", ".join(f"wrc_weights={k}: {v['median_s'] * 1e3:.1f} ms" for k, v in train["steps"].items())
    print(f"\ntrain step (median): {steps}; WRC slowdown {train['wrc_slowdown_pct']:+.1f} %")
    print(f"data pipeline {train['data_img_s']:.1f} img/s = {train['data_vs_step']:.2f}x the train step's rate; "
          f"a real loop ({train['settings']['workers']} workers) waits for data {train['loader_wait_pct']:.1f} % "
          "of the time")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(lambda: run(args, argv), args.debug)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Exit 2 for an unknown model name (checked before any timing), 3 when --json cannot be written."""
    for name in [*args.models, *([args.train_model] if args.train_step else [])]:
        check_model_name(name)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731 - progress on stderr, table on stdout
    settings = settings_from_args(args)
    if args.skip_inference or (args.exported and "--models" not in (sys.argv[1:] if argv is None else argv)):
        settings.models = []  # --exported alone times just those files
    report = run_benchmark(settings, log=log)
    report["command"] = " ".join(["python", "tools/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    if report["results"]:
        print(format_table(report, markdown=args.markdown))
        print()
    for precision, peak in report["matmul_peaks_gflop_s"].items():
        print(f"{precision} matmul peak: {peak:.1f} GFLOP/s ({report['env']['threads']} threads)")
    if args.exported:
        report["exported"] = [time_model(f, args.threads) for f in args.exported]
        print("| model | format | img | threads | graph ms | with post-processing ms |\n|---|---|---|---|---|---|")
        for r in report["exported"]:
            print(f"| {r['file']} | {r['format']} | {r['img']} | {r['threads'] or 'default'} | {r['runtime_ms']:.1f} | "
                  f"{r['with_post_ms']:.1f} |")
    if args.train_step:
        report["train_step"] = run_train_benchmark(train_settings_from_args(args), log=log)
        print_train_report(report["train_step"])
    if args.json:
        make_dir(args.json.parent, "--json's")
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
