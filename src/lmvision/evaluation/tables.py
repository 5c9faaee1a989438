"""Tables of test examples, written to ``<run dir>/figures/<key>.json`` and as W&B tables.

* :class:`ExampleTable` (``evaluation=fusion``): image, side text, label and prediction;
* :class:`DescriptionExplanations` (``evaluation=aux_text``): each prediction explained by the
  class descriptions of the predicted class that score highest for the image.

Both read the classification strategies' test outputs (``logits``, ``image_features``).
"""

from __future__ import annotations

from pytorch_lightning import Callback

from lmvision import checks
from lmvision.evaluation.figures import log_examples


class _Rows(Callback):
    """Collects up to ``examples`` rows over the test batches and logs them at the end."""

    key = "test/examples"

    def __init__(self, examples: int = 32) -> None:
        self.examples = checks.whole_number("examples", examples, minimum=0)
        self.rows: list[dict] = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.rows = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch: dict, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        room = self.examples - len(self.rows)
        if room > 0 and outputs and "logits" in outputs:
            n = min(room, len(outputs["logits"]))
            self.rows += self.rows_of(pl_module, outputs, batch, n)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        log_examples(trainer, self.key, self.rows)
        self.rows = []

    def rows_of(self, pl_module, outputs: dict, batch: dict, n: int) -> list[dict]:
        raise NotImplementedError


class ExampleTable(_Rows):
    """Test examples with their side text, label and prediction.

    Args:
        examples: Rows of the table.
    """

    key = "test/examples"

    def rows_of(self, pl_module, outputs: dict, batch: dict, n: int) -> list[dict]:
        predicted, actual = pl_module.describe(outputs["logits"][:n].cpu(),
                                               batch["label"][:n].cpu())
        return [{"_image": batch["image"][i].cpu(), "text": batch["text"][i],
                 "label": actual[i], "prediction": predicted[i]} for i in range(n)]


class DescriptionExplanations(_Rows):
    """Test predictions of a classifier by description, each with the descriptions of its
    predicted class that score highest.

    Args:
        examples: Rows of the table.
        top_k: Descriptions shown per example.
    """

    key = "test/explanations"

    def __init__(self, examples: int = 32, top_k: int = 3) -> None:
        super().__init__(examples)
        self.top_k = checks.whole_number("top_k", top_k)

    def rows_of(self, pl_module, outputs: dict, batch: dict, n: int) -> list[dict]:
        net, logits = pl_module.net, outputs["logits"][:n]
        scores = net.description_scores(outputs["image_features"][:n])  # (n, M)
        predicted, actual = pl_module.describe(logits.cpu(), batch["label"][:n].cpu())
        owners = net.description_owners.to(scores.device)
        rows = []
        for i in range(n):
            mine = (owners == logits[i].argmax()).nonzero().flatten()
            top = mine[scores[i, mine].argsort(descending=True)[:self.top_k]]
            rows.append({
                "_image": batch["image"][i].cpu(), "label": actual[i], "prediction": predicted[i],
                "confidence": round(float(logits[i].softmax(0).max()), 4),
                "because": " | ".join(f"{net.description_texts[j]} ({float(scores[i, j]):.3f})"
                                      for j in top.tolist())})
        return rows
