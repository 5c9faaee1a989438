"""Preemption and time limits: a warned job saves where it is, is requeued, and continues.

SLURM warns a job with a signal some time before its time limit, or before it preempts it
(``hydra.launcher.signal_delay_s`` of ``hydra/launcher=slurm``). Under
hydra-submitit-launcher, submitit handles that signal (``SIGUSR2``): it calls the launcher's
``checkpoint()``, which resubmits the same job, and requeues the job with ``scontrol requeue``.
lmvision uses that one mechanism and no other (Lightning's own SLURM requeue, on ``SIGUSR1``,
is switched off: see :func:`lmvision.config.build.trainer`). What lmvision adds:

1. :class:`Requeue`, added to every training run, replaces the signal's handler while the run
   fits with one that only notes the signal (a handler that saved there and then could catch
   the optimiser half-way through a step);
2. at the end of the next training batch (under DDP, all processes at the same batch, as soon
   as any one was warned) it saves ``checkpoints/last.ckpt`` at that point, mid-epoch
   included, and ends the fit with :class:`~lmvision.errors.Preempted`;
3. ``lmvision.train`` marks run.json ``requeued``, closes the W&B run and hands the signal to
   the handler it replaced: submitit requeues the job, which starts again under the same SLURM
   job id, in the same job directory;
4. there the job sees from run.json that it is the same SLURM job
   (:func:`lmvision.run.record.requeued_checkpoint`)
   and resumes from ``last.ckpt``: the same run record (``restarts`` counted), W&B run id and
   CSV log, and at the end the weights of a run that was never stopped (the datamodule saves
   its place in the epoch and augments each item with its own seed: see
   :class:`lmvision.data.datamodule.ImageDataModule`).

Without a Python handler on the signal (not under submitit), :class:`Requeue` does nothing.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from pytorch_lightning import Callback

from lmvision.errors import Preempted

WARNING_SIGNAL = "SIGUSR2"  # what submitit (>= 1.4.4) asks SLURM to send


class Requeue(Callback):
    """Saves ``checkpoint`` and ends the fit at the first safe point after a warning signal.

    Args:
        checkpoint: Where to save (the run's ``checkpoints/last.ckpt``).
        signal_name: The warning signal (``SIGUSR2``, submitit's).
    """

    def __init__(self, checkpoint: str | Path, signal_name: str = WARNING_SIGNAL) -> None:
        self.checkpoint = Path(checkpoint)
        self.signum = signal.Signals[signal_name]
        self.previous: Any = None  # the handler replaced while fitting (submitit's)
        self.active = False
        self.signalled = False

    def on_fit_start(self, trainer, pl_module) -> None:
        handler = signal.getsignal(self.signum)
        if not callable(handler) or threading.current_thread() is not threading.main_thread():
            return  # nobody would requeue this job: let the signal do what it does
        self.previous, self.active, self.signalled = handler, True, False
        signal.signal(self.signum, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def _warned(self, trainer) -> bool:
        if trainer.world_size > 1:  # every process stops at the same batch
            return bool(trainer.strategy.reduce_boolean_decision(self.signalled, all=False))
        return self.signalled

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.active:
            return
        done = batch_idx + 1
        # not half-way through accumulated gradients; the epoch's last batch waits for the end
        # of the epoch (its validation, then on_train_epoch_end)
        safe = done % trainer.accumulate_grad_batches == 0 and done < trainer.num_training_batches
        if safe and self._warned(trainer):
            self._stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.active and self._warned(trainer):
            self._stop(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        warned = self.active and self._warned(trainer)
        self._restore()
        if warned:  # warned after the last epoch's end: the test is left for the requeued job
            self._stop(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self.active:
            signal.signal(self.signum, self.previous)
            self.active = False

    def _stop(self, trainer) -> None:
        self._restore()
        partial = self.checkpoint.with_name(self.checkpoint.name + ".part")
        trainer.save_checkpoint(partial)  # every process takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, self.checkpoint)  # the previous last.ckpt stays until this is whole
        trainer.strategy.barrier("lmvision-requeue")
        raise Preempted(self.signum, self.previous, str(self.checkpoint),
                        epoch=trainer.current_epoch, step=trainer.global_step)
