"""Training callbacks: code of yours that runs at fixed points of :meth:`cspwrc.engine.trainer.Trainer.fit`.

Subclass :class:`Callback`, override the hooks you need and pass instances as ``Trainer(cfg, callbacks=[...])``
(from the command line's code: ``cspwrc.cli.train.main(argv, callbacks=[...])``). The names follow Ultralytics'
``on_train_start`` / ``on_train_epoch_end`` and Lightning's ``Callback`` hooks. In one run, in this order::

    on_train_start(trainer)               set-up done (data, model, optimizer, a resumed state), before epoch 1
    on_epoch_start(trainer, epoch)        0-based ``epoch`` seeded and its data prepared, before its first batch
    on_batch_start(trainer, index, images, targets)  a batch as the loader gave it (``index`` within the epoch)
    on_step_end(trainer, step, losses)    after every batch (and its optimizer step, when it made one)
    on_checkpoint(trainer)                rank 0, right after it wrote the epoch's checkpoints
    on_epoch_end(trainer, row)            after the epoch's evaluation, checkpoint and records
    on_train_end(trainer, summary)        after the final evaluation; not called when the run stops with an error
    on_teardown(trainer)                  always, last: after a finished, stopped or failed run (close files here)

* ``step`` is the batch's 0-based global step (the one a non-finite message names; ``trainer.state.global_step`` is
  ``step + 1`` by then). ``losses`` is ``float64 [len(LOSS_KEYS)]`` **on the device** (``loss``, ``loss_cls``,
  ``loss_box``, ``loss_dfl``; :data:`cspwrc.engine.report.LOSS_KEYS`), None for a step that ``nan_policy: skip``
  dropped. Reading it (``float``, ``.tolist()``) is a host sync per step: do it every N steps, or keep a device sum.
* ``row`` is the epoch's ``results.csv`` row (``epoch`` 1-based, the mean losses, ``lr``, ``map``/``map50`` or NaN
  when not evaluated, ``time_s``); ``last.state.pt`` already holds that epoch. ``trainer.epoch_speed`` has the
  epoch's train-loop :class:`~cspwrc.engine.report.Throughput` (images, seconds, img/s).
* ``summary`` is the ``metrics.json`` dict :meth:`~cspwrc.engine.trainer.Trainer.fit` returns.
* ``on_checkpoint`` writes records that must match the checkpoint (``results.csv``); a
  :class:`~cspwrc.atomic.WriteError` raised there stops every rank like a checkpoint that cannot be written.
* ``on_teardown`` runs in a ``finally``: its own error is logged, not raised over the run's.

The trainer's state is readable: ``trainer.cfg`` (the effective config: a copy, the caller's is never changed),
``trainer.state`` (:class:`~cspwrc.engine.run_state.RunState`), ``trainer.model``, ``trainer.optimizer``,
``trainer.out`` (the run folder). A hook that raises ends the run as an error in the loop would (the lock is
released, the last checkpoint kept); raise :class:`~cspwrc.engine.guard.TrainingStopped` to stop with exit 3.
Every DDP rank runs the hooks: act once with ``cspwrc.engine.distributed.is_main()``. The trainer's own reporting
(results.csv and curves, TensorBoard, batch pictures) is made of such callbacks (:mod:`cspwrc.engine.loggers`), run
before the caller's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the trainer imports this module; its type is only needed for the annotations
    from cspwrc.engine.trainer import Trainer

__all__ = ["Callback"]


class Callback:
    """Base class of training callbacks: every hook is a no-op; override the ones you need (module doc)."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Set-up is done, before the first epoch of this process (also of a resumed run)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the first batch of 0-based ``epoch``."""

    def on_batch_start(self, trainer: Trainer, index: int, images: torch.Tensor,
                       targets: list[dict[str, Any]]) -> None:
        """Before the step on the epoch's batch ``index``: ``images uint8 [B, 3, S, S]`` and ``targets`` as loaded."""

    def on_step_end(self, trainer: Trainer, step: int, losses: torch.Tensor | None) -> None:
        """After the batch of 0-based global ``step``; ``losses float64 [4]`` on the device, None when skipped."""

    def on_checkpoint(self, trainer: Trainer) -> None:
        """Rank 0, after the epoch's checkpoints were written (records that must match them)."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After the epoch's evaluation and checkpoint; ``row`` is its ``results.csv`` row."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """After the final evaluation; ``summary`` is the ``metrics.json`` dict."""

    def on_teardown(self, trainer: Trainer) -> None:
        """Always, last, whether the run finished, stopped or failed (close writers here)."""
