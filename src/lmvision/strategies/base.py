"""What every strategy shares: the network, optimiser and schedule wiring, logging a dict of
losses, the best value of the strategy's selection metric, and figures.

A strategy adds its loss and its metrics by defining two methods:

* ``step(batch, split) -> dict`` of losses for one batch (``"loss"`` is the one optimised);
  it may update the strategy's metrics, and it may add ``"outputs"``: a dict of the batch's
  predictions, which ``test_step`` returns to the evaluation callbacks (``on_test_batch_end``);
* ``epoch_metrics(split) -> dict`` of metrics for the finished epoch, named ``"<split>/<name>"``
  (computed across processes, then reset).

Each strategy config declares its selection metric (``monitor``, e.g. ``val/loss``) and its
direction (``monitor_mode``: ``max`` or ``min``). The best value so far is logged as
``<monitor>_best``; it is a buffer, so it is saved in checkpoints and survives a resume.
Checkpointing, early stopping, ``optimized_metric`` and the run's headline metrics follow the
same two keys by interpolation.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn

from lmvision import checks
from lmvision.errors import UserError
from lmvision.strategies.optim import AdamW
from lmvision.evaluation.figures import log_figure

MODES = ("max", "min")


class Strategy(pl.LightningModule):
    """Base of every strategy (one level of inheritance below it, at most two in all).

    Args:
        net: The network, already built (a plain ``nn.Module`` from ``lmvision.nn``).
        optimizer: Builds the optimiser: ``optimizer.build(net)`` (see ``lmvision.strategies.optim``).
        scheduler: Builds the schedule: ``scheduler.build(optimizer, total_steps)``; or ``None``.
        monitor: The validation metric that selects the best checkpoint, e.g. ``val/loss``.
        monitor_mode: ``max`` or ``min``: which direction of ``monitor`` is better.
    """

    def __init__(self, net: nn.Module, optimizer=None, scheduler=None, monitor: str = "val/loss",
                 monitor_mode: str = "min") -> None:
        super().__init__()
        checks.choice("monitor_mode", monitor_mode, MODES)
        if not str(monitor).startswith("val/"):
            raise checks.ArgumentError("monitor", "the selection metric must be a validation "
                                       "metric (val/...)", monitor)
        self.net = net
        self.optimizer = optimizer if optimizer is not None else AdamW()
        self.scheduler = scheduler
        self.monitor, self.monitor_mode = monitor, monitor_mode
        # best value of `monitor` so far: a buffer, so checkpoints carry it across a resume
        self.register_buffer("monitor_best", torch.tensor(math.nan))
        self._loss_sums: dict[str, dict[str, torch.Tensor]] = {}  # val/test: sum of loss * items
        self._loss_counts: dict[str, int] = {}

    # -- what a strategy defines --------------------------------------------------------------
    def step(self, batch: dict, split: str) -> dict[str, torch.Tensor]:
        """Losses of one batch (``"loss"`` is optimised); may update metrics of ``split``."""
        raise NotImplementedError

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        """Metrics of the finished epoch of ``split`` (synced across processes), then reset."""
        return {}

    def validation_metrics(self) -> list[str] | None:
        """Names of what validation logs (``val/...``), so that a ``monitor`` this strategy
        never logs is refused before training; ``None`` when not known in advance."""
        return None

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        names = self.validation_metrics()
        if names is not None and self.monitor not in names:
            raise UserError(f"strategy.monitor={self.monitor!r} is not a metric of this strategy; "
                            f"choose one of {', '.join(sorted(names))}")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.step(batch, "train")
        losses.pop("outputs", None)
        size = batch_size(batch)
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True,
                     prog_bar=name == "loss", batch_size=size)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses = self.step(batch, "val")
        losses.pop("outputs", None)
        self._add_losses("val", losses, batch_size(batch))

    def test_step(self, batch: dict, batch_idx: int) -> dict | None:
        losses = self.step(batch, "test")
        outputs = losses.pop("outputs", None)
        self._add_losses("test", losses, batch_size(batch))
        return outputs

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.epoch_metrics("train"), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        values = {**self._mean_losses("val"), **self.epoch_metrics("val")}
        if self.trainer.sanity_checking:
            return
        if self.monitor not in values:
            raise UserError(f"strategy.monitor={self.monitor!r} is not a metric of this strategy; "
                            f"it logs {', '.join(sorted(values))}")
        value = values[self.monitor].detach().to(self.monitor_best)
        best = self.monitor_best
        if torch.isnan(best) or (value > best if self.monitor_mode == "max" else value < best):
            self.monitor_best.copy_(value)
        self.log_dict({**values, f"{self.monitor}_best": self.monitor_best.clone()},
                      sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.log_dict({**self._mean_losses("test"), **self.epoch_metrics("test")}, sync_dist=True)

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer.build(self.net)
        if self.scheduler is None:
            return {"optimizer": optimizer}
        schedule = self.scheduler.build(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def class_names(self) -> list[str]:
        """The data's class names (``"0"``, ``"1"``... when the datamodule has none)."""
        classes = getattr(getattr(self.trainer, "datamodule", None), "classes", None)
        return list(classes) if classes else [str(i) for i in range(getattr(self, "num_classes", 0))]

    def log_figure(self, key: str, figure) -> None:
        """Save ``figure`` as PNG under ``<run dir>/figures/`` and send it to W&B / TensorBoard."""
        log_figure(self.trainer, key, figure)

    # -- loss bookkeeping ---------------------------------------------------------------------
    def _add_losses(self, split: str, losses: dict[str, torch.Tensor], size: int) -> None:
        # exact means over items (not over batches, nor over processes with unequal shares)
        sums = self._loss_sums.setdefault(split, {})
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value.detach().double() * size
        self._loss_counts[split] = self._loss_counts.get(split, 0) + size

    def _mean_losses(self, split: str) -> dict[str, torch.Tensor]:
        # every process has items (the datamodule refuses splits smaller than the world size),
        # so every process reaches the reduce below with the same loss names
        sums, count = self._loss_sums.pop(split, {}), self._loss_counts.pop(split, 0)
        if not sums:
            return {}
        names = sorted(sums)
        totals = torch.stack([torch.as_tensor(sums[n], device=self.device) for n in names]
                             + [torch.tensor(float(count), device=self.device, dtype=torch.float64)])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")  # every process's items
        return {f"{split}/{n}": (totals[i] / totals[-1]).float() for i, n in enumerate(names)}


def batch_size(batch: dict) -> int:
    """Number of examples in a batch dict (the length of its first tensor)."""
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return len(value)
    raise ValueError("a batch holds no tensor")
