"""Classification by description: images scored against class prototypes made of text.

An image encoder's features are projected into a text encoder's space; each class is described
by several texts (``lmvision.text.descriptions``), which the text encoder turns into vectors.
A plain ``nn.Module``, usable without Lightning:

    text = TextSide("text", tokenizer, make_encoder=encoder_factory, descriptions=descriptions,
                    classes=classes)                     # lmvision.text.side
    net = PrototypeClassifier(SmallCNN(), text)
    logits = net({"image": images})                      # (B, K)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmvision import checks
from lmvision.text.side import TextSide

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
        text: The run's text side (:class:`~lmvision.text.side.TextSide`): its text encoder
            (``forward(ids, mask) -> (B, Dt)``, ``out_dim``, ``frozen``), tokenizer, class names
            and class descriptions (matched to the classes by name, in class order).
        scoring: ``mean_prototype`` or ``mean_score``.
        hidden_dim: Width of a hidden layer in the projection (``None``: one linear layer).
        init_temperature: Initial softmax temperature of the cosine logits.
        learn_temperature: Learn the temperature (else keep it fixed).
    """

    def __init__(self, image_encoder: nn.Module, text: TextSide,
                 scoring: str = "mean_prototype", hidden_dim: int | None = None,
                 init_temperature: float = 0.07, learn_temperature: bool = True) -> None:
        super().__init__()
        scoring = checks.choice("scoring", scoring, SCORINGS)
        if hidden_dim is not None:
            hidden_dim = checks.whole_number("hidden_dim", hidden_dim)
        checks.number("init_temperature", init_temperature, low=0.0, low_open=True)
        text_encoder = text.encoder()
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
        # the descriptions to score against: text ``texts[i]`` describes class ``owners[i]``
        texts, owners = described_classes(text)
        enc = text.tokenizer(texts, padding=True, truncation=True, max_length=text.max_length,
                             return_tensors="pt")
        self.num_classes = len(text.classes)
        self.description_texts = texts
        self._descriptions = {"ids": enc["input_ids"], "mask": enc["attention_mask"],
                              "owners": torch.as_tensor(owners)}
        self._frozen_features: torch.Tensor | None = None

    @property
    def description_owners(self) -> torch.Tensor:
        """(M,) the class of each description."""
        return self._descriptions["owners"]

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def description_features(self) -> torch.Tensor:
        """(M, Dt) normalised vectors of every description."""
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


def described_classes(text: TextSide) -> tuple[list[str], list[int]]:
    """Every description of ``text`` and the index of its class; the descriptions must be those
    of the data's classes, in the same order (``ValueError`` naming ``text`` otherwise)."""
    descriptions = text.descriptions
    if descriptions is None:
        raise checks.ArgumentError("text", "classification by description needs class "
                                           "descriptions (descriptions=)")
    named = list(descriptions.by_class)
    if named != list(text.classes):
        raise checks.ArgumentError(
            "text", f"the descriptions' classes ({', '.join(named[:5])}, ...) are not the "
                    f"data's ({', '.join(text.classes[:5])}, ...) in the same order")
    texts, owners = descriptions.flat()
    if not texts:
        raise checks.ArgumentError("text", "no class has a description")
    return texts, owners
