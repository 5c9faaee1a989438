"""Image encoders. All share one API:

* ``forward(images) -> (B, D)``: a pooled feature vector per image;
* ``tokens(images) -> (B, N, D)``: a sequence of feature vectors (spatial cells or patches);
* ``out_dim``: ``D``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmvision import checks
from lmvision.errors import UserError


class SmallCNN(nn.Module):
    """A few conv-BN-ReLU stages with max-pooling; fast on two CPU cores at 32 px.

    Args:
        in_channels: Image channels.
        widths: Channels of each stage; every stage halves the resolution.
        out_dim: Size of the pooled feature (a 1x1 projection of the last stage).
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128),
                 out_dim: int = 128) -> None:
        super().__init__()
        layers, prev = [], in_channels
        for width in widths:
            layers += [
                nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(inplace=True), nn.MaxPool2d(2),
            ]
            prev = width
        layers += [nn.Conv2d(prev, out_dim, 1), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.out_dim = out_dim

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self._body(images)  # (B, D, h, w)
        return fmap.flatten(2).transpose(1, 2)  # (B, h*w, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._body(images).mean(dim=(2, 3))  # (B, D)

    def _body(self, images: torch.Tensor) -> torch.Tensor:
        # channels-last input picks the faster convolution kernels, on CPUs (oneDNN) and on GPUs
        # with mixed precision
        return self.body(images.contiguous(memory_format=torch.channels_last))


class TorchvisionEncoder(nn.Module):
    """Any torchvision classification model by name, without its classifier.

    Supports the three layouts torchvision uses: models with ``fc`` (ResNet, ResNeXt,
    Wide-ResNet, RegNet), models with ``features`` + ``classifier`` (VGG, MobileNet,
    EfficientNet, ConvNeXt, DenseNet) and the Vision Transformers (``vit_*``).

    Args:
        name: A name from ``torchvision.models.list_models()``, e.g. ``resnet18``.
        weights: ``None`` for random initialisation, or a weights name such as ``DEFAULT`` or
            ``IMAGENET1K_V1`` (downloaded by torchvision: needs network or a filled cache).
        in_channels: Channels of the input; grey images are repeated to three channels so
            pretrained first layers keep working.
        image_size: Input side, used to probe the feature size (and passed to ViTs).
        small_input: Replace a ResNet-style stem (7x7 stride-2 conv + max-pool) by a 3x3
            stride-1 conv, the usual choice for 32 px images.
        **kwargs: Passed to ``torchvision.models.get_model``.
    """

    # what lmvision-prefetch fetches for a node of this class: (kind, option, revision option)
    downloads = (("torchvision_weights", "weights", None),)

    def __init__(self, name: str, weights: str | None = None, in_channels: int = 3,
                 image_size: int = 224, small_input: bool = False, **kwargs) -> None:
        super().__init__()
        import torchvision

        if name not in torchvision.models.list_models():
            raise checks.ArgumentError("name", "not a torchvision model; see "
                                       "torchvision.models.list_models() (for timm models use "
                                       "backbone=timm)", name)
        if name.startswith("vit_") and weights is None:
            kwargs.setdefault("image_size", image_size)
        model = torchvision.models.get_model(name, weights=weights, **kwargs)
        self.name = name
        self.in_channels = in_channels
        self._vit = hasattr(model, "class_token") and hasattr(model, "conv_proj")
        if small_input:
            if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
                raise checks.ArgumentError("small_input", f"needs a ResNet-style stem; {name} has "
                                           "none", small_input)
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        if self._vit:
            model.heads = nn.Identity()
            self.model = model
        elif hasattr(model, "fc") and hasattr(model, "avgpool"):
            skip = {"fc", "avgpool"}
            self.model = nn.Sequential(*[m for n, m in model.named_children() if n not in skip])
        elif hasattr(model, "features") and hasattr(model, "classifier"):
            self.model = model.features
        else:
            raise checks.ArgumentError("name", "lmvision knows torchvision models with `fc`, "
                                       "with `features` + `classifier`, and ViTs; use "
                                       "backbone=timm for others", name)
        self.eval()  # probe the feature size without touching batch-norm statistics
        with torch.no_grad():
            probe = self.tokens(torch.zeros(1, in_channels, image_size, image_size))
        self.train()
        self.out_dim = int(probe.shape[-1])

    def _rgb(self, images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        x = self._rgb(images)
        if self._vit:
            x = self.model.conv_proj(x).flatten(2).transpose(1, 2)  # patches: (B, N, D)
            cls = self.model.class_token.expand(x.shape[0], -1, -1)
            return self.model.encoder(torch.cat([cls, x], dim=1))  # (B, 1+N, D)
        fmap = self.model(x)  # (B, D, h, w)
        return fmap.flatten(2).transpose(1, 2)  # (B, h*w, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(images)
        return tokens[:, 0] if self._vit else tokens.mean(dim=1)  # (B, D)


class TimmEncoder(nn.Module):
    """Any timm model by name (needs ``pip install timm``), classifier removed.

    Args:
        name: A timm model name, e.g. ``resnet18`` or ``vit_tiny_patch16_224``.
        pretrained: Load timm's pretrained weights (downloads them: needs network).
        in_channels: Image channels (timm adapts the stem).
        **kwargs: Passed to ``timm.create_model``.
    """

    def __init__(self, name: str, pretrained: bool = False, in_channels: int = 3, **kwargs) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise UserError("backbone=timm needs timm: pip install 'lmvision[timm]'") from err
        if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
            raise checks.ArgumentError("name", "not a timm model; see timm.list_models()", name)
        self.model = timm.create_model(name, pretrained=pretrained, num_classes=0,
                                       in_chans=in_channels, **kwargs)
        self.out_dim = int(self.model.num_features)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(images)
        if feats.ndim == 4:  # (B, D, h, w)
            return feats.flatten(2).transpose(1, 2)  # (B, h*w, D)
        return feats  # (B, N, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)  # (B, D)


class SmallViT(nn.Module):
    """A small Vision Transformer (pre-norm blocks, SDPA attention, learned positions).

    Args:
        image_size: Input side in pixels (a multiple of ``patch_size``).
        patch_size: Side of a patch.
        in_channels: Image channels.
        dim: Token width.
        depth: Number of transformer blocks.
        heads: Attention heads per block.
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        dropout: Dropout in attention and MLP.
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_channels: int = 3,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise checks.ArgumentError("image_size", f"not a multiple of patch_size={patch_size}",
                                       image_size)
        if dim % heads:
            raise checks.ArgumentError("dim", f"not divisible by heads={heads}", dim)
        n = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos  # (B, 1+N, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images)[:, 0]  # (B, D)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, H, T, D/H); mask: (B, 1, T, T) or (B, 1, 1, T), True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)

