"""Train the same detector recipe on several backbones (arms) x seeds and compare them with paired statistics.

Each variant is one `cspwrc train` (= tools/train_det.py) run with the same config, data, epochs and seed; only the
backbone (and its timm kwargs) changes. The table gives val mAP, mAP50, detector params, GFLOPs at the run's image
size, the run's train time and the process CPU time.

    python tools/compare_backbones.py --out runs/compare -- --epochs 8
    python tools/compare_backbones.py --variants cspwrc_s cspwrc_s:wrc_weights=none cs3darknet_s resnet18 \
        --out runs/compare --seeds 0 1 -- --data configs/data/coco_native.yaml --img 320

A variant is ``MODEL`` or ``MODEL:key=value,key=value`` (timm kwargs of the backbone, e.g.
``cspwrc_s:wrc_weights=channel,wrc_normalize=relu``). Arguments after ``--`` go to every train_det.py run;
``--variant-args VARIANT="ARGS"`` appends ARGS to one variant's runs only, e.g. fewer epochs for a backbone that
costs more per epoch, so that every variant gets the same CPU-time budget:

    python tools/compare_backbones.py --variant-args resnet18="--epochs 8" -- --epochs 15

A run whose directory already holds a metrics.json is not trained again (``--retrain`` forces it), so an
interrupted comparison continues where it stopped (also in a later session) and ``--report-only`` rebuilds the
tables from the finished runs without training anything.

Statistics (the WRC ablation, docs/results.md §5): runs with the same seed see the same data order and
augmentation, so each arm is compared with ``--baseline`` (default: the plain residual
``cspwrc_s:wrc_weights=none`` when compared) *per seed*: the paired difference's mean and its 95 % Student-t
interval over the seeds both arms finished. An interval that excludes 0 reads "better" or "worse", one that holds
0 "no measurable difference" (at this budget and number of seeds; :mod:`cspwrc.experiments.paired_stats`).
``stats.md``, ``stats.json`` and ``stats.png`` are written next to ``table.md``.

    OMP_NUM_THREADS=1 python tools/compare_backbones.py --out runs/ablation --seeds 0 1 2 \
        --variants cspwrc_s:wrc_weights=none cspwrc_s cspwrc_s:wrc_normalize=relu \
        -- --config configs/det/shwd_ablation.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from cspwrc.atomic import write_bytes, write_json
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.deploy.cost import model_cost
from cspwrc.det.load import load_detector
from cspwrc.errors import InputError
from cspwrc.experiments.paired_stats import arm_statistics, plot_statistics, stats_table

PLAIN = "cspwrc_s:wrc_weights=none"  # the plain-residual arm: the baseline of the WRC ablation
DEFAULT_VARIANTS = [PLAIN, "cspwrc_s", "cspwrc_s:wrc_normalize=relu", "cspwrc_s:wrc_normalize=softmax",
                    "cspwrc_s:wrc_weights=channel", "cspwrc_s:wrc_weights=channel,wrc_normalize=relu",
                    "cspwrc_s:wrc_weights=channel,wrc_normalize=softmax", "cs3darknet_s", "resnet18"]



def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``"cspwrc_s:wrc_weights=none"`` -> ``("cspwrc_s", {"wrc_weights": "none"})`` (values parsed as YAML)."""
    model, _, opts = text.partition(":")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"bad variant {text!r}: expected MODEL:key=value,...")
        kwargs[key] = yaml.safe_load(value)
    return model, kwargs


def run_dir_of(out: Path, variant: str, seed: int) -> Path:
    return out / f"{variant.replace(':', '_').replace(',', '_').replace('=', '-')}_seed{seed}"


def finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file() and (run_dir / "cpu_time.json").is_file()


def run_variant(variant: str, seed: int, out: Path, train_args: list[str], retrain: bool) -> dict[str, object]:
    """One training run in a child process; returns its metrics.json plus the child's CPU time.

    The CPU time is stored in the run directory (``cpu_time.json``) so that a finished run is reused as is.
    """
    model, kwargs = parse_variant(variant)
    run_dir = run_dir_of(out, variant, seed)
    cpu_file = run_dir / "cpu_time.json"
    if not retrain and finished(run_dir):
        print(f"{run_dir}: finished run found, not trained again", flush=True)
        return _run_record(run_dir, variant, seed, json.loads(cpu_file.read_text())["cpu_time_s"])
    cmd = [sys.executable, "-m", "cspwrc.cli", "train", "--model", model, "--seed", str(seed),
           "--out", str(run_dir), "--exist-ok", "--no-progress", *train_args]  # a retrain replaces the run
    if kwargs:
        cmd += ["--set", f"model.backbone.kwargs={json.dumps(kwargs)}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_time_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    write_json(cpu_file, {"cpu_time_s": cpu_time_s, "command": cmd})
    return _run_record(run_dir, variant, seed, cpu_time_s)


def finished_record(out: Path, variant: str, seed: int) -> dict[str, object] | None:
    """The record of a finished run, or None when that run has not finished (``--report-only``)."""
    run_dir = run_dir_of(out, variant, seed)
    if not finished(run_dir):
        return None
    return _run_record(run_dir, variant, seed, json.loads((run_dir / "cpu_time.json").read_text())["cpu_time_s"])


def _run_record(run_dir: Path, variant: str, seed: int, cpu_time_s: float) -> dict[str, object]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.update(cpu_time_s=cpu_time_s, variant=variant, seed=seed, run_dir=str(run_dir))
    return metrics


def run_cost(run_dir: str) -> tuple[float, float]:
    """Params (M) and GFLOPs per image of the trained detector, at the run's image size.

    nan, nan for a run kept as its records only (metrics.json + cpu_time.json, e.g. docs/ablation/): the statistics
    need no weights.
    """
    weights = Path(run_dir) / "last.safetensors"
    if not weights.is_file():
        return math.nan, math.nan
    model, meta = load_detector(weights)
    return model_cost(model, meta["img"])


def table(rows: list[dict[str, object]]) -> str:
    """Markdown, one line per run; each checkpoint is loaded and its FLOPs counted once, here."""
    lines = ["| backbone | seed | epochs | mAP@[.5:.95] | mAP50 | params (M) | GFLOPs | train time (s) "
             "| CPU time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params, gflops = run_cost(str(r["run_dir"]))
        lines.append(f"| {r['variant']} | {r['seed']} | {r['epochs']} | {r['map']:.4f} | {r['map50']:.4f} "
                     f"| {params:.2f} | {gflops:.2f} | {r['train_time_s']:.0f} | {r['cpu_time_s']:.0f} |")
    return "\n".join(lines)


def _variant_args(items: list[str], variants: list[str]) -> dict[str, list[str]]:
    """``['resnet18=--epochs 8']`` -> ``{'resnet18': ['--epochs', '8']}``; the variant must be compared."""
    extra = {}
    for item in items:
        # variants contain '=' themselves (cspwrc_s:wrc_weights=none), so match the known names
        variant = next((v for v in sorted(variants, key=len, reverse=True) if item.startswith(v + "=")), None)
        if variant is None:
            raise InputError(f"bad --variant-args {item!r}: expected VARIANT=\"ARGS\" for one of {variants}")
        extra[variant] = shlex.split(item[len(variant) + 1:])
    return extra


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Own flags before ``--``, train_det.py flags after it."""
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--variant-args", nargs="+", default=[], metavar='VARIANT="ARGS"',
                        help="extra train_det.py arguments for one variant")
    parser.add_argument("--baseline", default=None,
                        help=f"arm the others are compared with, per seed (default: {PLAIN} when compared, else "
                             "the first variant)")
    parser.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tabulate the finished runs of --variants x --seeds")
    add_debug_flag(parser)
    args = parser.parse_args(own)
    if args.baseline is None:
        args.baseline = PLAIN if PLAIN in args.variants else args.variants[0]
    return args, train_args


def write_report(rows: list[dict[str, object]], out: Path, baseline: str) -> str:
    """table.md (every run), stats.md/.json/.png (per arm, paired to the baseline); returns the markdown."""
    stats = arm_statistics(rows, baseline)
    runs, paired = table(rows), stats_table(stats, baseline)  # each rendered once
    write_bytes(out / "table.md", (runs + "\n").encode())
    write_bytes(out / "stats.md", (paired + "\n").encode())
    write_json(out / "stats.json", stats)
    write_json(out / "results.json", rows)
    plot_statistics(stats, rows, baseline, out / "stats.png")
    return runs + "\n\n" + paired


def run(args: argparse.Namespace, train_args: list[str]) -> int:
    if args.baseline not in args.variants:
        raise InputError(f"--baseline {args.baseline!r} is not one of --variants {args.variants}")
    extra = _variant_args(args.variant_args, args.variants)
    # Seed-major order: after any interruption, the finished runs form complete pairs for the earlier seeds.
    if args.report_only:
        rows = [r for s in args.seeds for v in args.variants if (r := finished_record(args.out, v, s)) is not None]
    else:
        rows = [run_variant(v, s, args.out, train_args + extra.get(v, []), args.retrain)
                for s in args.seeds for v in args.variants]
    if not rows:
        raise InputError(f"{args.out}: no finished run of {args.variants} x seeds {args.seeds}")
    print(write_report(rows, args.out, args.baseline))
    return 0


def main(argv: list[str] | None = None) -> int:
    args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: run(args, train_args), args.debug)
