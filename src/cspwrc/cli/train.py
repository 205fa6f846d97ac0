"""Train a cspwrc detector.

    python tools/train_det.py                                   # default recipe on the embedded shapes data
    python tools/train_det.py --data my.yaml --model cspwrc_s --epochs 50 --img 640 --out runs/mine
    python tools/train_det.py --resume runs/mine                # continue an interrupted run exactly
    torchrun --nproc_per_node 2 tools/train_det.py --data my.yaml   # DDP (gloo on CPU, nccl on GPU)

Config: configs/det/default.yaml, or configs/det/real.yaml with --data (or --config FILE) + flags + ``--set key.sub=value``; see docs/training.md.
Exit codes: 0 done, 2 bad input (config/data/checkpoint, a run directory another live process trains in),
3 run stopped (non-finite loss, unwritable checkpoint, SIGTERM/SIGINT, a lost DDP rank; the last finished epoch is
kept for --resume). --debug (or CSPWRC_DEBUG=1) adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cspwrc.cli import add_debug_flag, guarded
from cspwrc.engine.config import add_cli_arguments, cli_overrides, load_config
from cspwrc.engine.trainer import Trainer, load_resume

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "det" / "default.yaml"
REAL_CONFIG = DEFAULT_CONFIG.with_name("real.yaml")  # the recipe when --data names a data set


def default_recipe(args: argparse.Namespace) -> Path | None:
    """--config, else the real-data recipe with --data, else the embedded demo's recipe."""
    recipe = REAL_CONFIG if args.data else DEFAULT_CONFIG
    return Path(args.config) if args.config else recipe if recipe.is_file() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs only)")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    overrides = cli_overrides(args)
    if args.resume:
        if args.config:
            print("note: --config is ignored with --resume (the run's saved config is used)", file=sys.stderr)
        cfg, state = load_resume(args.resume, overrides)
    else:
        cfg, state = load_config(default_recipe(args), overrides), None
    metrics = Trainer(cfg, resume_state=state, progress=not args.no_progress).fit()
    print(f"mAP@[.5:.95] {metrics['map']:.4f}  mAP50 {metrics['map50']:.4f}  run dir {metrics['run_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
