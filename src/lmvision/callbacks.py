"""Callbacks lmvision adds to every run."""

from __future__ import annotations

from pytorch_lightning import Callback

from lmvision.text.tokenizers import tokenizer_state


class ConfigInCheckpoint(Callback):
    """Stores the run's config (unresolved), group choices and tokenizer in every checkpoint.

    ``lmvision-eval ckpt_path=...`` rebuilds the same data and model from them. The tokenizer is
    stored because one trained on the split (``text_encoder=scratch``) cannot be re-learned
    identically: WordPiece training breaks ties differently from run to run.
    """

    def __init__(self, config: dict, choices: dict) -> None:
        self.config = config
        self.choices = choices

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["lmvision_config"] = self.config
        checkpoint["lmvision_choices"] = self.choices
        tokenizer = getattr(pl_module, "tokenizer", None)
        if tokenizer is not None:
            checkpoint["lmvision_tokenizer"] = tokenizer_state(tokenizer)
