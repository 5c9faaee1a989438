"""The callback lmvision adds to every training run: what a checkpoint needs beyond weights."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback

from lmvision.text.tokenizers import tokenizer_state


class RunState(Callback):
    """Stores the run's config, group choices, tokenizer and random states in every checkpoint.

    * The config and choices let ``lmvision-eval ckpt_path=...`` rebuild the same data and model.
    * The tokenizer is stored so that a resumed or evaluated run encodes text exactly as the
      training did, whatever the text encoder config says by then.
    * The random number generators (Python, NumPy, torch, CUDA) are saved with the checkpoint
      and restored on resume, so that dropout, augmentation and modality dropout draw in a
      resumed run exactly what they drew in a run that was never stopped.

    Args:
        config: The run's config (unresolved), as plain containers.
        choices: The option chosen in each config group.
        text: The run's text side (:class:`~lmvision.text.side.TextSide`), whose tokenizer and
            descriptions are stored; ``None`` for a run that reads no text.
    """

    def __init__(self, config: dict, choices: dict, text=None) -> None:
        self.config, self.choices, self.text = config, choices, text

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["lmvision_config"] = self.config
        checkpoint["lmvision_choices"] = self.choices
        if self.text is not None:
            checkpoint["lmvision_tokenizer"] = tokenizer_state(self.text.tokenizer)
            if self.text.descriptions is not None:  # what the run trained with (an LM's text too)
                checkpoint["lmvision_descriptions"] = self.text.descriptions.state()
        # zero-shot runs: the classes held out of training
        checkpoint["lmvision_unseen_classes"] = trainer.datamodule.class_split["unseen_classes"]

    def state_dict(self) -> dict[str, Any]:
        # plain types and tensors only: Lightning loads checkpoints with torch.load(weights_only=True)
        name, keys, position, has_gauss, gauss = np.random.get_state()
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position),
                           int(has_gauss), float(gauss)]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()  # this process's device only
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        name, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"])


class StopAfterEpochs(Callback):
    """Ends the job once it has trained ``epochs`` epochs, as a preemption or a time limit would,
    but at an epoch boundary and with the schedule still planned for ``trainer.max_epochs``: the
    run is continued later with ``ckpt_path=<run dir>/checkpoints/last.ckpt`` (the same command
    again trains the next ``epochs``).

    Args:
        epochs: Epochs this job trains (counted from where it started).
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.first_epoch = 0
        self.stopped = False  # True when this callback ended the job before max_epochs

    def on_train_start(self, trainer, pl_module) -> None:
        self.first_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if trainer.current_epoch + 1 - self.first_epoch >= self.epochs and not last:
            trainer.should_stop = self.stopped = True
