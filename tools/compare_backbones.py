#!/usr/bin/env python3
"""Train the same detector recipe on several backbones and tabulate the results (issue 7's fair comparison).

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
interrupted comparison continues where it stopped and the table can be rebuilt from finished runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from cspwrc.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ["cspwrc_s", "cspwrc_s:wrc_weights=channel", "cspwrc_s:wrc_normalize=relu",
                    "cspwrc_s:wrc_weights=none", "cs3darknet_s", "resnet18"]


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``"cspwrc_s:wrc_weights=none"`` -> ``("cspwrc_s", {"wrc_weights": "none"})`` (values parsed as YAML)."""
    model, _, opts = text.partition(":")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bad variant {text!r}: expected MODEL:key=value,...")
        kwargs[key] = yaml.safe_load(value)
    return model, kwargs


def run_variant(variant: str, seed: int, out: Path, train_args: list[str], retrain: bool) -> dict[str, object]:
    """One training run in a child process; returns its metrics.json plus the child's CPU time.

    The CPU time is stored in the run directory (``cpu_time.json``) so that a finished run is reused as is.
    """
    model, kwargs = parse_variant(variant)
    run_dir = out / f"{variant.replace(':', '_').replace(',', '_').replace('=', '-')}_seed{seed}"
    cpu_file = run_dir / "cpu_time.json"
    if not retrain and (run_dir / "metrics.json").is_file() and cpu_file.is_file():
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


def _run_record(run_dir: Path, variant: str, seed: int, cpu_time_s: float) -> dict[str, object]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.update(cpu_time_s=cpu_time_s, variant=variant, seed=seed, run_dir=str(run_dir))
    return metrics


def model_cost(run_dir: str) -> tuple[float, float]:
    """Params (M) and GFLOPs per image of the trained detector, at the run's image size."""
    from cspwrc.deploy.benchmark import count_flops, count_params
    from cspwrc.engine.checkpoint import load_detector

    model, meta = load_detector(Path(run_dir) / "last.safetensors")
    x = torch.zeros(1, 3, meta["img"], meta["img"])
    with torch.no_grad():
        return count_params(model) / 1e6, count_flops(model.eval(), x) / 1e9


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| backbone | seed | epochs | mAP@[.5:.95] | mAP50 | params (M) | GFLOPs | train time (s) | CPU time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params, gflops = model_cost(str(r["run_dir"]))
        lines.append(f"| {r['variant']} | {r['seed']} | {r['epochs']} | {r['map']:.4f} | {r['map50']:.4f} | {params:.2f} | "
                     f"{gflops:.2f} | {r['train_time_s']:.0f} | {r['cpu_time_s']:.0f} |")
    return "\n".join(lines)


def _variant_args(items: list[str], variants: list[str]) -> dict[str, list[str]]:
    """``['resnet18=--epochs 8']`` -> ``{'resnet18': ['--epochs', '8']}``; the variant must be compared."""
    extra = {}
    for item in items:
        # variants contain '=' themselves (cspwrc_s:wrc_weights=none), so match the known names
        variant = next((v for v in sorted(variants, key=len, reverse=True) if item.startswith(v + "=")), None)
        if variant is None:
            raise SystemExit(f"bad --variant-args {item!r}: expected VARIANT=\"ARGS\" for one of {variants}")
        extra[variant] = shlex.split(item[len(variant) + 1:])
    return extra


def main() -> int:
    argv = sys.argv[1:]
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--variant-args", nargs="+", default=[], metavar='VARIANT="ARGS"',
                        help="extra train_det.py arguments for one variant")
    parser.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    args = parser.parse_args(own)
    extra = _variant_args(args.variant_args, args.variants)
    rows = [run_variant(v, s, args.out, train_args + extra.get(v, []), args.retrain)
            for s in args.seeds for v in args.variants]
    text = table(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
