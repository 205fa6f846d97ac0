#!/usr/bin/env python3
"""Train the same detector recipe on several backbones (arms) x seeds and compare them with paired statistics.

Each variant is one `tools/train_det.py` run with the same config, data, epochs and seed; only the backbone
(and its timm kwargs) changes. The table gives val mAP, mAP50, detector params, GFLOPs at the run's image
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
0 "no measurable difference" (at this budget and number of seeds). ``stats.md``, ``stats.json`` and ``stats.png``
are written next to ``table.md``.

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
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend needed

from cspwrc.atomic import write_bytes, write_json
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.deploy.cost import model_cost as detector_cost
from cspwrc.engine.checkpoint import load_detector
from cspwrc.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
PLAIN = "cspwrc_s:wrc_weights=none"  # the plain-residual arm: the baseline of the WRC ablation
DEFAULT_VARIANTS = [PLAIN, "cspwrc_s", "cspwrc_s:wrc_normalize=relu", "cspwrc_s:wrc_normalize=softmax",
                    "cspwrc_s:wrc_weights=channel", "cspwrc_s:wrc_weights=channel,wrc_normalize=relu",
                    "cspwrc_s:wrc_weights=channel,wrc_normalize=softmax", "cs3darknet_s", "resnet18"]
# Two-sided 95 % Student-t quantiles t(0.975, df) for df = 1..30 (standard tables); beyond, the Cornish-Fisher
# expansion around the normal quantile is accurate to 1e-3.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


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
    cmd = [sys.executable, str(ROOT / "tools" / "train_det.py"), "--model", model, "--seed", str(seed),
           "--out", str(run_dir), "--exist-ok", "--no-progress", *train_args]  # a retrain replaces the run
    if kwargs:
        cmd += ["--set", f"model.options.backbone_kwargs={json.dumps(kwargs)}"]
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


def model_cost(run_dir: str) -> tuple[float, float]:
    """Params (M) and GFLOPs per image of the trained detector, at the run's image size.

    nan, nan for a run kept as its records only (metrics.json + cpu_time.json, e.g. docs/ablation/): the statistics
    need no weights.
    """
    weights = Path(run_dir) / "last.safetensors"
    if not weights.is_file():
        return math.nan, math.nan
    model, meta = load_detector(weights)
    return detector_cost(model, meta["img"])


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| backbone | seed | epochs | mAP@[.5:.95] | mAP50 | params (M) | GFLOPs | train time (s) "
             "| CPU time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params, gflops = model_cost(str(r["run_dir"]))
        lines.append(f"| {r['variant']} | {r['seed']} | {r['epochs']} | {r['map']:.4f} | {r['map50']:.4f} "
                     f"| {params:.2f} | {gflops:.2f} | {r['train_time_s']:.0f} | {r['cpu_time_s']:.0f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ statistics


def t_quantile_975(df: int) -> float:
    """The two-sided 95 % Student-t critical value ``t(0.975, df)``."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; nan for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def paired_interval(arm: dict[int, float], base: dict[int, float]) -> dict[str, float | int]:
    """Paired difference ``arm - base`` over the seeds both have: mean, std, and its 95 % t interval.

    Pairing removes what the seeds share (data order, augmentation, initialisation stream), so the interval is
    about the arm, not about which seeds were drawn. With fewer than two pairs the interval is undefined (nan).
    """
    seeds = sorted(arm.keys() & base.keys())
    diffs = [arm[s] - base[s] for s in seeds]
    if not diffs:
        return {"n": 0, "mean": math.nan, "std": math.nan, "low": math.nan, "high": math.nan}
    mean, std = mean_std(diffs)
    half = t_quantile_975(len(diffs) - 1) * std / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return {"n": len(diffs), "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def verdict(interval: dict[str, float | int]) -> str:
    if int(interval["n"]) < 2 or math.isnan(float(interval["low"])):
        return "too few seeds"
    if float(interval["low"]) > 0:
        return "better"
    if float(interval["high"]) < 0:
        return "worse"
    return "no measurable difference"


def arm_statistics(rows: list[dict[str, object]], baseline: str, key: str = "map") -> list[dict[str, object]]:
    """Per arm: seeds, mean +- std of ``key``, and the paired difference to ``baseline`` with its verdict."""
    by_arm: dict[str, dict[int, float]] = {}
    for r in rows:
        by_arm.setdefault(str(r["variant"]), {})[int(r["seed"])] = float(r[key])
    base = by_arm.get(baseline, {})
    stats = []
    for arm, values in by_arm.items():
        mean, std = mean_std(list(values.values()))
        entry: dict[str, object] = {"arm": arm, "seeds": sorted(values), "mean": mean, "std": std}
        if arm != baseline:
            entry["paired"] = paired_interval(values, base)
            entry["verdict"] = verdict(entry["paired"])
        stats.append(entry)
    return stats


def _fmt(value: float, digits: int = 4) -> str:
    return "–" if math.isnan(value) else f"{value:+.{digits}f}" if value < 0 else f"{value:.{digits}f}"


def stats_table(stats: list[dict[str, object]], baseline: str) -> str:
    lines = [f"| arm | seeds | mAP@[.5:.95] mean ± std | paired Δ vs {baseline} | 95 % interval | verdict |",
             "|---|---|---|---|---|---|"]
    for s in stats:
        p = s.get("paired")
        delta = "(baseline)" if p is None else f"{float(p['mean']):+.4f} (n={p['n']})"
        interval = "" if p is None else f"[{_fmt(float(p['low']))}, {_fmt(float(p['high']))}]"
        lines.append(f"| {s['arm']} | {','.join(map(str, s['seeds']))} | {float(s['mean']):.4f} ± "
                     f"{_fmt(float(s['std']))} | {delta} | {interval} | {s.get('verdict', '')} |")
    return "\n".join(lines)


def plot_statistics(stats: list[dict[str, object]], rows: list[dict[str, object]], baseline: str, path: Path) -> None:
    """Left: every run's mAP per arm (mean marked); right: paired differences to the baseline with 95 % intervals."""
    fig = Figure(figsize=(12, 0.5 * len(stats) + 2))
    ax_runs, ax_diff = fig.subplots(1, 2, sharey=True)
    arms = [str(s["arm"]) for s in stats]
    for i, arm in enumerate(arms):
        values = [float(r["map"]) for r in rows if r["variant"] == arm]
        ax_runs.scatter(values, [i] * len(values), s=14, color="tab:blue", alpha=0.7)
        ax_runs.scatter([float(stats[i]["mean"])], [i], marker="|", s=300, color="black")
        paired = stats[i].get("paired")
        if paired and int(paired["n"]) >= 2:
            mean, low, high = float(paired["mean"]), float(paired["low"]), float(paired["high"])
            ax_diff.errorbar([mean], [i], xerr=[[mean - low], [high - mean]], fmt="o", capsize=4,
                             color="tab:green" if low > 0 else "tab:red" if high < 0 else "tab:gray")
    ax_runs.set_yticks(range(len(arms)), arms, fontsize=8)
    ax_runs.set_xlabel("val mAP@[.5:.95] (one dot per seed, bar = mean)")
    ax_diff.axvline(0.0, color="black", linewidth=0.8)
    ax_diff.set_xlabel(f"paired Δ mAP vs {baseline}, 95 % t interval")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


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
    text = table(rows) + "\n\n" + stats_table(stats, baseline)
    write_bytes(out / "table.md", (table(rows) + "\n").encode())
    write_bytes(out / "stats.md", (stats_table(stats, baseline) + "\n").encode())
    write_json(out / "stats.json", stats)
    write_json(out / "results.json", rows)
    plot_statistics(stats, rows, baseline, out / "stats.png")
    return text


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


if __name__ == "__main__":
    sys.exit(main())
