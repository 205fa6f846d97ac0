"""The cspwrc training steps of the GPU measurement (:mod:`cspwrc.experiments.gpu_check`), run in their own process:

    python -m cspwrc.experiments.gpu_train [cspwrc train flags ...]

Runs ``cspwrc train`` with the flags given and a callback (:mod:`cspwrc.engine.callbacks`) that prints one line per
epoch, ``EPOCH {"epoch": 1, "seconds": 38.0, "img_s": 25.3, "started_at": UNIX_TIME}``: the trainer's own numbers
for the epoch's train loop (data + step, all ranks; what the log line's ``train=38.0s 25.3 img/s`` shows) and the
wall-clock time its first batch was about to start. gpu_check reads these instead of parsing the human log line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from cspwrc.cli import train
from cspwrc.engine import distributed as dist
from cspwrc.engine.callbacks import Callback
from cspwrc.engine.trainer import Trainer
from cspwrc.experiments.gpu_check import EPOCH_MARKER


class EpochTimes(Callback):
    """Prints an :data:`~cspwrc.experiments.gpu_check.EPOCH_MARKER` line at the end of every epoch (rank 0)."""

    def __init__(self) -> None:
        self.started_at = 0.0

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.started_at = time.time()

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        speed = trainer.epoch_speed
        if speed is not None and dist.is_main():
            print(EPOCH_MARKER + json.dumps({"epoch": row["epoch"], "seconds": round(speed.seconds, 1),
                                             "img_s": round(speed.img_s, 1), "started_at": self.started_at}),
                  flush=True)


def main(argv: list[str]) -> int:
    return train.main(argv, callbacks=[EpochTimes()])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
