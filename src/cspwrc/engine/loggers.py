"""The trainer's own reporting, as default callbacks (as Ultralytics' loggers are): ``results.csv`` and
``curves.png``, TensorBoard scalars, and the ``train_batch*.jpg`` pictures of what the model is fed.

:func:`default_callbacks` gives them to every :class:`~cspwrc.engine.trainer.Trainer`, before the caller's own; they
act on rank 0 only. Each owns its files: a new report is one more class here, not another branch in the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from cspwrc.atomic import WriteError
from cspwrc.engine import distributed as dist
from cspwrc.engine import guard, report
from cspwrc.engine.callbacks import Callback

if TYPE_CHECKING:  # the trainer imports this module; its type is only needed for the annotations
    from cspwrc.engine.trainer import Trainer

__all__ = ["PLOT_BATCHES", "BatchPictures", "ResultsFiles", "TensorBoardLogger", "default_callbacks"]

PLOT_BATCHES = 3  # train_batch*.jpg pictures at the start of the run and of the close-mosaic epochs


class ResultsFiles(Callback):
    """``results.csv`` and ``curves.png`` from the run's history, rewritten with every checkpoint (``on_checkpoint``:
    a resumed run rewrites them from the checkpoint's history, so they never run ahead of it)."""

    def on_checkpoint(self, trainer: Trainer) -> None:
        report.write_results_csv(trainer.out / "results.csv", trainer.state.history)
        report.plot_curves(trainer.out / "curves.png", trainer.state.history)


class TensorBoardLogger(Callback):
    """Every epoch's finite numbers as TensorBoard scalars in ``OUT/tb`` (``train.tensorboard``; nothing when the
    optional tensorboard package is missing); the writer is closed by ``on_teardown``, also when a run stops."""

    def __init__(self) -> None:
        self.writer: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.cfg.train.tensorboard and dist.is_main():
            self.writer = report.tensorboard_writer(trainer.out / "tb", trainer.state.epoch + 1)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.writer is not None:
            report.add_scalars(self.writer, row)

    def on_teardown(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class BatchPictures(Callback):
    """``OUT/train_batch{step}.jpg``: the first :data:`PLOT_BATCHES` batches of the run and of the first close-mosaic
    epoch, as the model gets them, boxes and class names drawn (rank 0)."""

    def __init__(self) -> None:
        self.plot = 0

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        cfg = trainer.cfg.train
        first_closed = epoch == cfg.epochs - cfg.close_mosaic  # the first epoch without mosaic
        self.plot = PLOT_BATCHES if (epoch == 0 or first_closed) and dist.is_main() else 0

    def on_batch_start(self, trainer: Trainer, index: int, images: torch.Tensor,
                       targets: list[dict[str, Any]]) -> None:
        if index >= self.plot:
            return
        try:
            report.save_batch_picture(trainer.out / f"train_batch{trainer.state.global_step}.jpg", images, targets,
                                      trainer.train_set.class_names)
        except WriteError as err:
            raise guard.cannot_save(str(err)) from err


def default_callbacks() -> list[Callback]:
    """Fresh instances of the reporting callbacks every run has (module doc)."""
    return [ResultsFiles(), TensorBoardLogger(), BatchPictures()]
