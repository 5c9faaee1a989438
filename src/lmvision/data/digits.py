"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 real scans, no download)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from lmvision.data import spec
from lmvision.data.in_memory import InMemoryDataset
from lmvision import checks

_CAPTIONS = (
    "a handwritten {name}",
    "the digit {name}, written by hand",
    "a scanned handwritten {name}",
    "a {name} drawn with a pen",
    "handwriting of the number {name}",
)
# Side text carries no label: it is what a form would say about every scan.
_TEXTS = (
    "a handwritten digit",
    "a digit scanned from a form",
    "a handwritten character from a scanned page",
    "a low-resolution scan of a digit",
)


class DigitsDataset(InMemoryDataset):
    """scikit-learn's handwritten digits as a grey-scale image dataset.

    Args:
        image_size: Side of the images returned; 8 keeps the original scans, larger values
            upsample them (bilinear), which lets standard backbones downsample several times.
        seed: Seed for the choice of caption and text phrasings.
    """

    def __init__(self, image_size: int = 8, seed: int = 0) -> None:
        from sklearn.datasets import load_digits

        checks.whole_number("image_size", image_size, minimum=8)
        bunch = load_digits()
        pixels = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
        if int(image_size) != 8:
            pixels = F.interpolate(pixels, size=(int(image_size),) * 2, mode="bilinear",
                                   align_corners=False)
        self.images = (pixels.clamp(0, 1) * 255 + 0.5).to(torch.uint8)  # (N, 1, H, W)
        self.labels = torch.from_numpy(bunch.target.astype(np.int64))
        self.classes = list(spec.DIGITS)
        self.image_size = int(image_size)
        self.channels = 1
        self.task = "multiclass"
        rng = np.random.default_rng(seed)
        self.captions = [
            _CAPTIONS[rng.integers(len(_CAPTIONS))].format(name=self.classes[y])
            for y in bunch.target
        ]
        self.texts = [_TEXTS[rng.integers(len(_TEXTS))] for _ in bunch.target]

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]

