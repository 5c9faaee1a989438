"""Colour palettes: images become sequences of palette tokens, and back (as Image GPT).

    quantizer = PaletteQuantizer(num_colors=16, channels=3)
    quantizer.fit(images)                 # (N, C, H, W) in [0, 1]: seeded mini-batch k-means
    tokens = quantizer.encode(images)     # (N, H*W) palette indices
    images = quantizer.decode(tokens, 32) # (N, C, 32, 32)

The palette is a buffer: it is saved in checkpoints and restored with them.
"""

from __future__ import annotations

import torch
from torch import nn

from lmvision import checks
from lmvision.errors import UserError


class PaletteQuantizer(nn.Module):
    """A palette of ``num_colors`` colours fitted by mini-batch k-means on training pixels.

    Args:
        num_colors: Palette size (iGPT used 512; small data needs fewer).
        channels: 1 (grey) or 3 (RGB).
    """

    def __init__(self, num_colors: int, channels: int) -> None:
        super().__init__()
        checks.whole_number("num_colors", num_colors, minimum=2)
        checks.choice("channels", channels, (1, 3))
        self.num_colors, self.channels = num_colors, channels
        self.register_buffer("palette", torch.zeros(num_colors, channels))
        self.register_buffer("fitted", torch.tensor(False))

    def fit(self, images: torch.Tensor, seed: int = 0, steps: int = 200,
            batch_size: int = 4096) -> "PaletteQuantizer":
        """Fit the palette to the pixels of ``images`` (N, C, H, W) in [0, 1] (k-means++
        seeding, then mini-batch k-means, Sculley 2010), deterministically for a given ``seed``. Colours left without
        pixels are re-drawn from the data."""
        pixels = self._pixels(images)
        if len(pixels) < self.num_colors:
            raise UserError(f"a palette of {self.num_colors} colours needs at least as many "
                            f"training pixels; got {len(pixels)}")
        generator = torch.Generator().manual_seed(int(seed))
        centres = kmeans_plus_plus(pixels, self.num_colors, generator)
        counts = torch.zeros(self.num_colors)
        for _ in range(steps):
            batch = pixels[torch.randint(len(pixels), (batch_size,), generator=generator)]
            nearest = torch.cdist(batch, centres).argmin(1)
            hits = torch.bincount(nearest, minlength=self.num_colors).float()
            sums = torch.zeros_like(centres).index_add_(0, nearest, batch)
            counts += hits
            seen = hits > 0
            # each centre moves to the running mean of the pixels assigned to it so far
            rate = (hits[seen] / counts[seen]).unsqueeze(1)
            centres[seen] += rate * (sums[seen] / hits[seen].unsqueeze(1) - centres[seen])
        dead = counts == 0
        if dead.any():  # colours no pixel chose: re-drawn from the data
            centres[dead] = pixels[torch.randint(len(pixels), (int(dead.sum()),), generator=generator)]
        order = centres.sum(1).argsort()  # dark to bright: token order means something in plots
        self.palette.copy_(centres[order].to(self.palette))
        self.fitted.fill_(True)
        return self

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected images (N, {self.channels}, H, W), got {tuple(images.shape)}")
        return images.float().permute(0, 2, 3, 1).reshape(-1, self.channels).cpu()

    def encode(self, images: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, H*W) palette indices (nearest colour), row by row."""
        if not bool(self.fitted):
            raise RuntimeError("fit the palette before encoding")
        b, c, h, w = images.shape
        pixels = images.float().permute(0, 2, 3, 1).reshape(-1, c)
        palette = self.palette.to(pixels)
        tokens = torch.cat([torch.cdist(part, palette).argmin(1) for part in pixels.split(chunk)])
        return tokens.view(b, h * w)

    def decode(self, tokens: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
        """(B, H*W) palette indices -> (B, C, H, W) in [0, 1]."""
        h, w = (size, size) if isinstance(size, int) else size
        colours = self.palette[tokens.long()]  # (B, H*W, C)
        return colours.view(len(tokens), h, w, self.channels).permute(0, 3, 1, 2).contiguous()


def kmeans_plus_plus(pixels: torch.Tensor, k: int, generator: torch.Generator,
                     sample: int = 20000) -> torch.Tensor:
    """k initial centres drawn from (a sample of) ``pixels``, each with probability growing with
    its squared distance to the centres drawn before (Arthur & Vassilvitskii 2007)."""
    pixels = pixels[torch.randperm(len(pixels), generator=generator)[:sample]]
    centres = [pixels[torch.randint(len(pixels), (1,), generator=generator)]]
    nearest = torch.cdist(pixels, centres[0]).squeeze(1) ** 2
    for _ in range(k - 1):
        if nearest.sum() <= 0:  # fewer distinct colours than k: any pixel will do
            choice = torch.randint(len(pixels), (1,), generator=generator)
        else:
            choice = torch.multinomial(nearest, 1, generator=generator)
        centres.append(pixels[choice])
        nearest = torch.minimum(nearest, torch.cdist(pixels, centres[-1]).squeeze(1) ** 2)
    return torch.cat(centres).clone()
