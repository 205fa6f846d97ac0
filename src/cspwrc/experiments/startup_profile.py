"""The start-up profile of the GPU measurement (:mod:`cspwrc.experiments.gpu_check`), run in its own process:

    python -m cspwrc.experiments.startup_profile --data D --model M --img 640 --batch 16 --device cuda \\
        --out RUN_DIR --stats FILE --spawned-at UNIX_TIME

Builds ``Trainer(cfg)`` (data checks, RAM cache, datasets, model) for the ``coco128_memorize`` recipe under
cProfile, writes the 60 most expensive calls (cumulative) to ``--stats`` and prints one line
``imports X s (process start + imports), Trainer() Y s``. The import time is counted from ``--spawned-at`` (the
parent's ``time.time()`` when it started this process): ``python -m`` imports the cspwrc package (torch, timm)
before this module's code runs, so a clock started here would miss it.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

from cspwrc.cli.train import resolve_config
from cspwrc.engine.config import load_config
from cspwrc.engine.trainer import Trainer

IMPORTED_AT = time.time()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in ("--data", "--model", "--device", "--out", "--stats"):
        p.add_argument(flag, required=True)
    p.add_argument("--img", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--spawned-at", type=float, required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cfg = load_config(resolve_config("coco128_memorize"), {
        "data": {"path": args.data, "cache": "ram", "workers": "auto"}, "model": {"name": args.model},
        "train": {"img": args.img, "batch": args.batch, "device": args.device, "out": args.out}})
    profile = cProfile.Profile()
    profile.runcall(Trainer, cfg, progress=False)
    print(f"imports {IMPORTED_AT - args.spawned_at:.1f} s (process start + imports), "
          f"Trainer() {time.perf_counter() - t0:.1f} s", flush=True)
    with open(args.stats, "w") as f:
        pstats.Stats(profile, stream=f).sort_stats("cumulative").print_stats(60)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
