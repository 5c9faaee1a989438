"""Explanations of a classifier's decision and how faithful they are.

An explanation here is a caption (from a captioner) and a saliency map (from Captum) for the
class the classifier predicted. It is faithful when it agrees with the decision and with where
the classifier looked:

* ``mention_rate``: share of captions that name the predicted class;
* ``consistency``: accuracy of a text-only classifier (trained on the training captions) that
  reads the generated caption, relative to the image classifier's accuracy;
* ``counterfactual``: with the object masked out, how often the caption (as the text
  classifier reads it) and the prediction change together (both change, or neither);
* ``pointing``: share of images whose saliency peak falls on the object (a peak of several
  pixels at the same maximum counts the share of them on the object; a random peak scores the
  object's share of the image, reported as ``pointing_random``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lmvision.errors import UserError
from lmvision.evaluation.caption_metrics import mentions, normalise

SALIENCY_METHODS = ("integrated_gradients", "gradcam", "occlusion", "lime")


class TextClassifier:
    """Caption → class: TF-IDF of words and word pairs and a logistic regression, fitted on
    the training captions (every reference) and their images' labels."""

    def __init__(self, captions: list[str], labels: list[int]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        if len(set(labels)) < 2:
            raise UserError("the text-only classifier needs training captions of two classes")
        self.model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), preprocessor=normalise),
                                   LogisticRegression(max_iter=2000, C=10.0))
        self.model.fit(captions, labels)

    def predict(self, captions: list[str]) -> torch.Tensor:
        return torch.as_tensor(self.model.predict(list(captions)), dtype=torch.long)


def mask_out(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Images with the object's pixels replaced by the median of each image's background."""
    masks = masks.bool().unsqueeze(1).expand_as(images)  # (B, C, H, W)
    out = images.clone()
    for i in range(len(images)):
        background = images[i][~masks[i]].view(images.shape[1], -1) if (~masks[i]).any() else None
        fill = (background.median(dim=1).values if background is not None
                else torch.zeros(images.shape[1], device=images.device))
        out[i] = torch.where(masks[i], fill.view(-1, 1, 1), images[i])
    return out


def last_conv(module: nn.Module) -> nn.Module:
    """The last convolution of an image encoder (where Grad-CAM looks)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError("Grad-CAM needs a convolutional image encoder (this one has no Conv2d); "
                        "use saliency=integrated_gradients, occlusion or lime")
    # the last conv with a spatial kernel: a 1x1 projection after it keeps the same map
    spatial = [m for m in convs if m.kernel_size != (1, 1)]
    return (spatial or convs)[-1]


def black(datamodule) -> torch.Tensor:
    """(C,) the value of a black pixel as the network sees it (after normalisation): the
    baseline of integrated gradients and the fill of occlusion, as in their papers."""
    mean = torch.as_tensor(datamodule.mean, dtype=torch.float32)
    std = torch.as_tensor(datamodule.std, dtype=torch.float32)
    return (0.0 - mean) / std


def saliency(method: str, forward: Callable[[torch.Tensor], torch.Tensor], encoder: nn.Module,
             images: torch.Tensor, targets: torch.Tensor,
             baseline: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, W) non-negative saliency of ``forward(images)[target]`` by a Captum method;
    ``baseline`` (C,) is the reference pixel of integrated gradients and occlusion and the
    fill of LIME's hidden cells (default: zeros)."""
    from captum.attr import (IntegratedGradients, LayerAttribution, LayerGradCam, Lime,
                             Occlusion)

    if method not in SALIENCY_METHODS:
        raise UserError(f"saliency method {method!r}: choose from {', '.join(SALIENCY_METHODS)}")
    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone().requires_grad_(method == "integrated_gradients")
        targets = targets.detach().clone()
        reference = torch.zeros_like(x) if baseline is None else \
            baseline.to(x).view(1, -1, 1, 1).expand_as(x).contiguous()
        if method == "integrated_gradients":
            attr = IntegratedGradients(forward).attribute(x, baselines=reference,
                                                          target=targets, n_steps=16,
                                                          internal_batch_size=len(x) * 16)
            return attr.abs().sum(1).detach()
        if method == "gradcam":
            cam = LayerGradCam(forward, last_conv(encoder)).attribute(x, target=targets)
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")
            return cam.squeeze(1).clamp(min=0).detach()
        side = max(2, x.shape[-1] // 8)
        if method == "lime":
            return lime(Lime, forward, x, targets, reference, side)
        attr = Occlusion(forward).attribute(
            x, target=targets, baselines=reference, sliding_window_shapes=(x.shape[1], side, side),
            strides=(x.shape[1], max(1, side // 2), max(1, side // 2)))
        return attr.sum(1).clamp(min=0).detach()


def lime(Lime, forward: Callable, x: torch.Tensor, targets: torch.Tensor,
         reference: torch.Tensor, side: int, samples: int = 256) -> torch.Tensor:
    """LIME (Ribeiro et al. 2016) on a grid of ``side``-pixel cells as superpixels: ``samples``
    random subsets of cells are shown (the rest filled with ``reference``), and a ridge
    regression of the class score on which cells were shown, weighted by closeness to the
    whole image, gives each cell its weight. Seeded per image, so an image's map repeats itself
    whatever batch it is explained in."""
    from lmvision.compat import captum_ridge

    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device) // side
    cols = torch.arange(w, device=x.device) // side
    cells = (rows[:, None] * ((w + side - 1) // side) + cols[None, :])  # (H, W) cell ids
    feature_mask = cells.expand(x.shape[1], h, w).unsqueeze(0)
    explainer = Lime(forward, interpretable_model=captum_ridge(alpha=1.0))
    maps = []
    with torch.random.fork_rng(devices=[]):
        for i in range(len(x)):  # LIME fits one regression per image
            torch.manual_seed(0)  # the same draws for each image, wherever it sits in the batch
            attr = explainer.attribute(x[i:i + 1], target=targets[i:i + 1],
                                       baselines=reference[i:i + 1], feature_mask=feature_mask,
                                       n_samples=samples, perturbations_per_eval=64)
            maps.append(attr.sum(1).clamp(min=0).detach())
    return torch.cat(maps)


def pointing_hits(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) whether each map's peak falls on the object: 1 or 0 for a single peak pixel. A peak
    of several pixels at the same maximum (a LIME cell, a flat map) scores the share of them on
    the object, as a peak drawn among them would on average; taking the first of them would
    favour the top-left of every cell."""
    flat = maps.flatten(1)
    peak = flat == flat.max(1, keepdim=True).values
    on_object = (peak & masks.flatten(1).bool()).sum(1)
    return on_object.float() / peak.sum(1).float()


class Faithfulness:
    """Accumulates the faithfulness metrics over batches (see the module docstring)."""

    def __init__(self, classes: list[str], text_classifier: TextClassifier | None) -> None:
        self.classes, self.text_classifier = classes, text_classifier
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, values: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(values.float().sum())
        self.counts[name] = self.counts.get(name, 0) + int(values.numel())

    def update(self, captions: list[str], predicted: torch.Tensor, labels: torch.Tensor) -> None:
        predicted, labels = predicted.cpu(), labels.cpu()
        self.add("mention", torch.tensor([mentions(c, self.classes[int(p)])
                                          for c, p in zip(captions, predicted)]))
        self.add("image_correct", predicted == labels)
        if self.text_classifier is not None:
            self.add("text_correct", self.text_classifier.predict(captions) == labels)

    def update_counterfactual(self, captions: list[str], predicted: torch.Tensor,
                              masked_captions: list[str], masked_predicted: torch.Tensor) -> None:
        if self.text_classifier is None:
            return
        read = self.text_classifier.predict(captions)
        read_masked = self.text_classifier.predict(masked_captions)
        self.add("counterfactual", (read != read_masked) == (predicted.cpu() != masked_predicted.cpu()))

    def update_pointing(self, method: str, maps: torch.Tensor, masks: torch.Tensor) -> None:
        self.add(f"pointing_{method}", pointing_hits(maps, masks))
        self.add("pointing_random", masks.flatten(1).float().mean(1))  # chance of a random peak

    def totals(self) -> tuple[list[str], torch.Tensor]:
        names = sorted(self.sums)
        return names, torch.tensor([[self.sums[n], float(self.counts[n])] for n in names],
                                   dtype=torch.float64)

    @staticmethod
    def metrics(names: list[str], totals: torch.Tensor, prefix: str = "explain/") -> dict[str, float]:
        """Metrics from (summed across processes) ``totals``."""
        means = {n: float(totals[i, 0] / totals[i, 1]) for i, n in enumerate(names) if totals[i, 1] > 0}
        out = {}
        if "mention" in means:
            out["mention_rate"] = means["mention"]
        if "text_correct" in means and means.get("image_correct", 0) > 0:
            out["consistency"] = means["text_correct"] / means["image_correct"]
            out["text_acc"] = means["text_correct"]
        if "counterfactual" in means:
            out["counterfactual"] = means["counterfactual"]
        pointing = {n: v for n, v in means.items() if n.startswith("pointing_") and n != "pointing_random"}
        out.update(pointing)
        if pointing:
            out["pointing"] = max(pointing.values())
            out["pointing_random"] = means["pointing_random"]
        return {f"{prefix}{k}": v for k, v in out.items()}
