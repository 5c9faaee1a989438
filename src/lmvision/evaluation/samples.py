"""Sample grids of a pixel language model, drawn at validation (``evaluation=pixel_lm``).

Completions of validation images from their top half, and samples without a condition, per
class and per caption (as the model allows), saved as PNG under ``<run dir>/figures/`` and sent
to W&B / TensorBoard. ``sampling.guidance`` > 1 samples the conditional ones with
classifier-free guidance (the model has learned "no condition" too, from its
``condition_dropout``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pytorch_lightning import Callback

from lmvision import checks
from lmvision.errors import UserError
from lmvision.evaluation.figures import image_grid_figure, log_figure

SAMPLING = ("temperature", "top_k", "top_p", "guidance", "compile")


def sampling_settings(sampling: Mapping[str, Any] | None, conditions: tuple[str, ...]
                      ) -> tuple[dict[str, Any], float]:
    """``(settings for PixelGPT.generate, guidance)`` from a ``sampling`` config node, checked:
    guidance other than 1 needs a model with conditions."""
    sampling = dict(sampling or {})
    unknown = [k for k in sampling if k not in SAMPLING]
    if unknown:
        raise checks.ArgumentError("sampling", f"{unknown[0]!r} is not one of "
                                   f"{', '.join(SAMPLING)}")
    guidance = checks.number("sampling.guidance", sampling.get("guidance", 1.0), low=0.0)
    if guidance != 1.0 and not conditions:
        raise checks.ArgumentError("sampling.guidance", "other than 1 only for a model with "
                                   "conditions (strategy.net.conditions)", guidance)
    return ({"temperature": sampling.get("temperature", 1.0), "top_k": sampling.get("top_k", 0),
             "top_p": sampling.get("top_p", 1.0),
             "compile_step": bool(sampling.get("compile", False))}, guidance)


def check_sampling(sampling: Mapping[str, Any] | None, conditions: tuple[str, ...]) -> None:
    """Refuse, when a run sets up (before training), ``sampling`` settings that the model
    cannot sample with, naming the option the user wrote (``evaluation.sampling.guidance``)."""
    try:
        sampling_settings(sampling, conditions)
    except checks.ArgumentError as err:
        raise UserError(err.renamed(f"evaluation.{err.argument}")) from err


class SampleGrids(Callback):
    """Draws the sample grids of a ``pixel_lm`` run at validation.

    Args:
        images: Images per grid (0: no grids).
        every_n_epochs: Draw them every this many validation epochs (and always at the last).
        sampling: ``temperature``, ``top_k``, ``top_p``, ``guidance`` (classifier-free guidance
            weight of conditional samples; 1: none) and ``compile`` (sample through the
            ``torch.compile``'d cached step).
    """

    def __init__(self, images: int = 16, every_n_epochs: int = 1,
                 sampling: Mapping[str, Any] | None = None) -> None:
        self.images = checks.whole_number("images", images, minimum=0)
        self.every_n_epochs = checks.whole_number("every_n_epochs", every_n_epochs)
        self.sampling = dict(sampling or {})
        self._shown: dict[str, Any] | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        check_sampling(self.sampling, pl_module.net.conditions)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch: dict, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self._shown is None and self.images:
            keep = {k: batch[k][:self.images] for k in ("image", "label", "caption_ids",
                                                        "caption_mask") if k in batch}
            keep["caption"] = batch.get("caption", [""] * len(batch["image"]))[:self.images]
            self._shown = keep

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        shown, self._shown = self._shown, None
        epoch = trainer.current_epoch
        last = bool(trainer.max_epochs) and epoch + 1 >= trainer.max_epochs
        due = last or (epoch + 1) % self.every_n_epochs == 0
        if shown is None or trainer.sanity_checking or not due or trainer.global_rank != 0:
            return
        names = pl_module.class_names()
        for key, (images, titles) in draw(pl_module.net, shown, names, self.images,
                                          self.sampling, seed=epoch).items():
            log_figure(trainer, f"samples/{key}", image_grid_figure(images, titles))


@torch.no_grad()
def draw(net, shown: dict, class_names: list[str], count: int, sampling: Mapping[str, Any],
         seed: int) -> dict[str, tuple[torch.Tensor, list | None]]:
    """Sample grids of a :class:`~lmvision.nn.pixel_lm.PixelLM`: completions of ``shown``
    images from their top half, and samples without a condition, per class and per caption."""
    settings, guidance = sampling_settings(sampling, net.conditions)
    was_training = net.training
    net.eval()
    gpt, size = net.gpt, net.image_size
    device, n = shown["image"].device, len(shown["image"])
    settings["generator"] = torch.Generator(device="cpu").manual_seed(seed)
    tokens = net.palette.encode(shown["image"])
    half = (size // 2) * size
    null = net.null_prefix(n, device)
    grids = {"completion": (torch.cat([net.palette.decode(tokens, size),
                                       net.sample(null, known=tokens[:, :half], **settings)]),
                            ["original"] * n + ["completed"] * n),
             "unconditional": (net.sample(null, **settings), None)}
    if gpt.num_classes:
        labels = torch.arange(min(len(class_names), count), device=device)
        grids["class"] = (net.sample(net.class_prefix(labels), guidance, **settings),
                          [class_names[i] for i in labels.tolist()])
    if gpt.caption_tokens:
        prefix = net.caption_prefix(shown["caption_ids"], shown["caption_mask"])
        grids["caption"] = (net.sample(prefix, guidance, **settings),
                            [c[:40] for c in shown["caption"]])
    net.train(was_training)
    return grids
