"""A callback for the tests: which items each process trained on, per epoch (a JSON file per
rank). Loaded by a run started as a subprocess through ``+callbacks.seen._target_``."""

from __future__ import annotations

import json
from pathlib import Path

from pytorch_lightning import Callback


class RecordSeen(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seen: dict[int, list[int]] = {}
        self.first: dict[str, int] | None = None  # where this process began training

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first is None:
            self.first = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        self.seen.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"seen-rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))
        (self.path / f"first-step-rank{trainer.global_rank}.json").write_text(
            json.dumps(self.first))
