"""Train a cspwrc detector.

    python tools/train_det.py                                   # default recipe on the embedded shapes data
    python tools/train_det.py --data my.yaml --model cspwrc_s --epochs 50 --img 640 --out runs/mine
    python tools/train_det.py --resume runs/mine                # continue an interrupted run exactly
    cspwrc train --config sgd --data my.yaml                    # a packaged recipe by name (default, sgd, ...)
    torchrun --nproc_per_node 2 tools/train_det.py --data my.yaml   # DDP (gloo on CPU, nccl on GPU)

Config: the packaged recipe ``default`` (configs/det/default.yaml), ``real`` with --data, or --config FILE or a
recipe name; + flags + ``--set key.sub=value``; see docs/training.md. A run directory that already holds a run is
not reused: the run goes to the next free numbered folder (runs/det2, runs/det3, ...) unless --exist-ok (or --resume).
Exit codes: 0 done, 2 bad input (config/data/checkpoint, a run directory another live process trains in),
3 run stopped (non-finite loss, unwritable checkpoint, SIGTERM/SIGINT, a lost DDP rank; the last finished epoch is
kept for --resume). --debug (or CSPWRC_DEBUG=1) adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cspwrc.cli import add_debug_flag, guarded
from cspwrc.cli.train_flags import add_train_flags, train_overrides
from cspwrc.engine.callbacks import Callback
from cspwrc.engine.config import ConfigError, load_config
from cspwrc.engine.trainer import Trainer, load_resume

# The recipes ship inside the package (src/cspwrc/configs links to the checkout's configs/), so an installed
# ``cspwrc train`` finds them without a source checkout.
RECIPES = Path(__file__).resolve().parents[1] / "configs" / "det"
DEFAULT_CONFIG = RECIPES / "default.yaml"
REAL_CONFIG = RECIPES / "real.yaml"  # the recipe when --data names a data set


def resolve_config(name: str) -> Path:
    """``--config``: a YAML file, or the name of a packaged recipe (``default``, ``real``, ``sgd``, ...)."""
    path = Path(name)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path  # a file path (a missing one is reported by load_config)
    recipe = RECIPES / f"{name}.yaml"
    if not recipe.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
        raise ConfigError(f"--config {name}: no such file, and not a packaged recipe ({known})")
    return recipe


def default_recipe(args: argparse.Namespace) -> Path | None:
    """--config (a file or a recipe name), else the real-data recipe with --data, else the embedded demo's recipe."""
    if args.config:
        return resolve_config(args.config)
    recipe = REAL_CONFIG if args.data else DEFAULT_CONFIG
    return recipe if recipe.is_file() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_flags(parser)
    parser.add_argument("--exist-ok", action="store_true",
                        help="write into --out even if it holds a run (default: the next free runs/det2, ...)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs only)")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, callbacks: Sequence[Callback] = ()) -> int:
    overrides = train_overrides(args)
    if args.resume:
        if args.config:
            print("note: --config is ignored with --resume (the run's saved config is used)", file=sys.stderr)
        cfg, state = load_resume(args.resume, overrides)
    else:
        cfg, state = load_config(default_recipe(args), overrides), None
    new_run_dir = not (args.resume or args.exist_ok)
    metrics = Trainer(cfg, resume_state=state, progress=not args.no_progress, new_run_dir=new_run_dir,
                      callbacks=callbacks).fit()
    print(f"mAP@[.5:.95] {metrics['map']:.4f}  mAP50 {metrics['map50']:.4f}  run dir {metrics['run_dir']}")
    return 0


def main(argv: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> int:
    """``cspwrc train``; ``callbacks`` (:mod:`cspwrc.engine.callbacks`) go to the trainer, for code that runs the
    command with its own hooks (tests, :mod:`cspwrc.experiments.gpu_train`)."""
    args = parse_args(argv)
    return guarded(lambda: run(args, callbacks), args.debug)


if __name__ == "__main__":
    sys.exit(main())
