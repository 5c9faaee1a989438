"""Classification by description: images scored against class prototypes made of text.

An image encoder's features are projected into a text encoder's space; each class is described
by several texts (``lmvision.text.descriptions``), which the text encoder turns into vectors.
A plain ``nn.Module``, usable without Lightning:

    net = PrototypeClassifier(SmallCNN(), text_encoder)
    net.set_descriptions(texts, owners, tokenizer)       # owners[i]: class of texts[i]
    logits = net({"image": images})                      # (B, K)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmvision.errors import UserError

SCORINGS = ("mean_prototype", "mean_score")
MAX_LOGIT_SCALE = math.log(100.0)  # temperature at least 0.01, as CLIP


class PrototypeClassifier(nn.Module):
    """Cosine similarity between projected image features and class prototypes from text.

    ``scoring``: ``mean_prototype`` scores an image against the normalised mean of its class's
    description vectors; ``mean_score`` scores it against every description and averages the
    scores of each class (classification by description, Menon & Vondrick 2022). Either way the
    logits are the cosine similarities times a learned inverse temperature.

    With a frozen text encoder the description vectors are computed once (per device) and
    reused; with a trained one they are encoded at every forward pass, with gradients.

    Args:
        image_encoder: Image encoder (``forward(images) -> (B, Di)``, ``out_dim``).
        text_encoder: Text encoder (``forward(ids, mask) -> (B, Dt)``, ``out_dim``, ``frozen``).
        scoring: ``mean_prototype`` or ``mean_score``.
        hidden_dim: Width of a hidden layer in the projection (``None``: one linear layer).
        init_temperature: Initial softmax temperature of the cosine logits.
        learn_temperature: Learn the temperature (else keep it fixed).
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module,
                 scoring: str = "mean_prototype", hidden_dim: int | None = None,
                 init_temperature: float = 0.07, learn_temperature: bool = True) -> None:
        super().__init__()
        if scoring not in SCORINGS:
            raise UserError(f"strategy.net.scoring must be one of {', '.join(SCORINGS)}, "
                            f"got {scoring!r}")
        if hidden_dim is not None and (isinstance(hidden_dim, bool) or hidden_dim < 1):
            raise UserError(f"strategy.net.hidden_dim must be null or at least 1, got {hidden_dim}")
        if not init_temperature > 0:
            raise UserError(f"strategy.net.init_temperature must be > 0, got {init_temperature}")
        self.image_encoder, self.text_encoder, self.scoring = image_encoder, text_encoder, scoring
        dim_in, dim_out = image_encoder.out_dim, text_encoder.out_dim
        if hidden_dim:
            self.projection = nn.Sequential(nn.Linear(dim_in, hidden_dim), nn.GELU(),
                                            nn.Linear(hidden_dim, dim_out))
        else:
            self.projection = nn.Linear(dim_in, dim_out)
        scale = torch.tensor(math.log(1.0 / init_temperature))
        if learn_temperature:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)
        self.num_classes = 0
        self._descriptions: dict[str, torch.Tensor] | None = None
        self._frozen_features: torch.Tensor | None = None

    def set_descriptions(self, texts: list[str], owners: list[int], tokenizer,
                         max_length: int = 64) -> None:
        """The descriptions to score against: ``texts[i]`` describes class ``owners[i]``."""
        if not texts or len(texts) != len(owners):
            raise UserError("PrototypeClassifier needs at least one description, with one class "
                            "index per description")
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        self.num_classes = max(owners) + 1
        self._descriptions = {"ids": enc["input_ids"], "mask": enc["attention_mask"],
                              "owners": torch.as_tensor(owners)}
        self._frozen_features = None

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def description_features(self) -> torch.Tensor:
        """(M, Dt) normalised vectors of every description."""
        if self._descriptions is None:
            raise RuntimeError("call set_descriptions() before scoring images")
        device = self.projection_device()
        frozen = self.text_encoder.frozen
        if frozen and self._frozen_features is not None and self._frozen_features.device == device:
            return self._frozen_features
        ids, mask = self._descriptions["ids"], self._descriptions["mask"]
        if not frozen:
            return F.normalize(self.text_encoder(ids.to(device), mask.to(device)), dim=-1)
        # cached for later steps: a normal tensor even when first computed under validation's
        # inference mode (an inference tensor cannot be used by a training step's backward)
        with torch.inference_mode(False), torch.no_grad():
            features = self.text_encoder(ids.to(device), mask.to(device))
            self._frozen_features = F.normalize(features, dim=-1)
        return self._frozen_features

    def projection_device(self) -> torch.device:
        return next(self.projection.parameters()).device

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, Dt) normalised image vectors in the text space."""
        return F.normalize(self.projection(self.image_encoder(images)), dim=-1)

    def description_scores(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, M) cosine similarity of each image with each description."""
        return image_features @ self.description_features().T

    def score(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, K) logits of normalised image features."""
        descriptions = self.description_features()  # (M, D)
        owners = self._descriptions["owners"].to(descriptions.device)
        counts = torch.bincount(owners, minlength=self.num_classes).clamp(min=1).unsqueeze(1)
        if self.scoring == "mean_prototype":
            sums = torch.zeros(self.num_classes, descriptions.shape[1], device=descriptions.device,
                               dtype=descriptions.dtype).index_add_(0, owners, descriptions)
            similarity = image_features @ F.normalize(sums / counts, dim=-1).T  # (B, K)
        else:
            per_description = image_features @ descriptions.T  # (B, M)
            sums = torch.zeros(self.num_classes, len(image_features), device=descriptions.device,
                               dtype=descriptions.dtype).index_add_(0, owners, per_description.T)
            similarity = (sums / counts).T  # (B, K)
        return self.scale * similarity

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.score(self.image_features(inputs["image"]))  # (B, K)
