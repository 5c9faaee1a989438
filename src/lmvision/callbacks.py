"""Callbacks lmvision adds to every run."""

from __future__ import annotations

from pytorch_lightning import Callback


class ConfigInCheckpoint(Callback):
    """Stores the run's config (unresolved) and group choices in every checkpoint.

    ``lmvision-eval ckpt_path=...`` rebuilds the same data and model from them.
    """

    def __init__(self, config: dict, choices: dict) -> None:
        self.config = config
        self.choices = choices

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["lmvision_config"] = self.config
        checkpoint["lmvision_choices"] = self.choices
