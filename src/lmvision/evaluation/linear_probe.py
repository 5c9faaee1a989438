"""The linear probe of a pixel language model, run when testing (``evaluation=pixel_lm``).

Logistic regression on the mean-pooled output of every block (``probe/acc_layer_<i>``;
``probe/best_layer`` is chosen by cross-validation over train and val, and ``probe/acc_best``
is its test accuracy) and on every block's output side by side (``probe/acc_all_layers``),
beside the same probe on raw pixels (``probe/acc_pixels``) and on the same architecture with
random weights (``probe/acc_random_init``, ``probe/acc_random_init_all_layers``), with the
cross-validated accuracies of the chosen probes (``probe/cv_acc_*``: they compare settings
without reading the test split). :mod:`lmvision.evaluation.probes` has the protocol.
"""

from __future__ import annotations

import copy

import torch
from pytorch_lightning import Callback

from lmvision import checks
from lmvision.evaluation.probes import fit_probes

RANDOM_INIT_SEED = 1234  # weights of the random-init probe control
CHUNK = 256  # images per forward pass


class LinearProbe(Callback):
    """Probes the network of a ``pixel_lm`` run at the end of testing.

    Args:
        max_train: Training images the probe learns from, at most.
    """

    def __init__(self, max_train: int = 5000) -> None:
        self.max_train = checks.whole_number("max_train", max_train)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        values = probe(pl_module.net, trainer, self.max_train)
        # every process computes the same values: nothing to reduce
        pl_module.log_dict({k: float(v) for k, v in values.items()})


@torch.no_grad()
def probe(net, trainer, max_train: int) -> dict[str, float]:
    """Per-block logistic-regression probes, the raw-pixel probe and the random-init probe of
    ``net`` (a :class:`~lmvision.nn.pixel_lm.PixelLM`), on the trainer's datamodule."""
    datamodule = trainer.datamodule
    datamodule.setup("test")
    # the probe reads the training images as they are, never augmented
    splits = {"train": datamodule.unaugmented("train"), "val": datamodule.data_val,
              "test": datamodule.data_test}
    # a run that tests only some batches (debug=fdr|limit) probes as many items per split
    tested = sum(trainer.num_test_batches) * datamodule.eval_batch_size
    budget = tested if tested < len(datamodule.data_test) else None
    random_init = copy.deepcopy(net)
    random_init.gpt.reset_parameters(RANDOM_INIT_SEED)
    device = next(net.parameters()).device
    features = {name: {"trained": [], "random": [], "pixels": [], "labels": []} for name in splits}
    was_training = net.training
    net.eval()
    random_init.eval()
    for name, data in splits.items():
        limit = max_train if name == "train" else len(data)
        limit = min(limit, budget or limit)
        for start in range(0, min(limit, len(data)), CHUNK):
            items = [data[i] for i in range(start, min(start + CHUNK, limit, len(data)))]
            images = torch.stack([it["image"] for it in items]).to(device)
            store = features[name]
            store["trained"].append(torch.stack(net.features(images)).cpu())
            store["random"].append(torch.stack(random_init.features(images)).cpu())
            store["pixels"].append(images.flatten(1).unsqueeze(0).cpu())
            store["labels"].append(torch.as_tensor([int(it["label"]) for it in items]))
    net.train(was_training)
    merged = {name: {k: torch.cat(v, dim=0 if k == "labels" else 1) for k, v in store.items()}
              for name, store in features.items()}
    return fit_probes(merged)
