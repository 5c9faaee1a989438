"""What the datamodule reads of a dataset, declared: :class:`ImageDataset`.

A dataset is a ``torch.utils.data.Dataset`` whose item ``i`` is a dict
``{"image": uint8 (C, H, W), "label": int or multi-hot (K,), "text"?: str, "caption"?: str,
"references"?: [str, ...], "mask"?: bool (H, W)}`` and which also says, as attributes, what the
datamodule needs without loading images. :class:`DatasetBase` gives every attribute its "the
data has none" value, so a dataset sets only what it has.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

@runtime_checkable
class ImageDataset(Protocol):
    """The attributes the datamodule reads (besides ``__len__`` and ``__getitem__``).

    Attributes:
        classes: Class (or tag) names, in label order.
        labels: Every item's label, ``(N,)`` or ``(N, K)``; ``None``: read item by item.
        texts: Every item's side text (known at prediction time), or ``None`` (the data has
            none).
        captions: Every item's caption (a description to learn or score), or ``None``.
        references: Every item's reference captions (several per image), or ``None``.
        split_indices: The data's own ``train``/``val``/``test`` item indices (``val`` may be
            missing), or ``None``: the datamodule splits with a seed.
        class_parts: For classes that combine attributes (``red circle``), each class's parts,
            so that held-out classes are made of seen parts; or ``None``.
        shard_of: ``(N,)`` the shard each item is read from (data in tar shards), or ``None``.
        skipped: Items left out as unreadable (``data.on_bad_item=skip``): ``{"file", "reason"}``.
        fingerprint: A short hash of the data (files, labels, strings), for the run record.
        source: The option or file that names the data, for messages.
        image_size, channels, task: What the data gives (``None``: the data config's value,
            which the dataset does not know; e.g. files resized to ``data.image_size``).
    """

    classes: list[str]
    labels: Any
    texts: list[str] | None
    captions: list[str] | None
    references: list[list[str]] | None
    split_indices: dict[str, torch.Tensor] | None
    class_parts: list[tuple[str, ...]] | None
    shard_of: torch.Tensor | None
    skipped: list[dict[str, str]]
    fingerprint: str | None
    source: str
    image_size: int | None
    channels: int | None
    task: str | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


class DatasetBase(Dataset):
    """A dataset that has only what it sets: every optional attribute of
    :class:`ImageDataset` defaults to "none"."""

    labels: Any = None
    texts: list[str] | None = None
    captions: list[str] | None = None
    references: list[list[str]] | None = None
    split_indices: dict[str, torch.Tensor] | None = None
    class_parts: list[tuple[str, ...]] | None = None
    shard_of: torch.Tensor | None = None
    skipped: list[dict[str, str]] = []  # noqa: RUF012 - never mutated on the class
    fingerprint: str | None = None
    source: str = ""  # the datamodule then names the dataset by its class
    image_size: int | None = None
    channels: int | None = None
    task: str | None = None


def strings_of(dataset: ImageDataset, field: str) -> list[str] | None:
    """Every item's string of ``field`` (``text`` or ``caption``), or ``None``."""
    return {"text": dataset.texts, "caption": dataset.captions}[field]


def missing_attributes(dataset: Any) -> list[str]:
    """The attributes of :class:`ImageDataset` that ``dataset`` lacks (none for a conforming
    one)."""
    names = [n for n in ImageDataset.__annotations__] + ["__len__", "__getitem__"]
    return [n for n in names if not hasattr(dataset, n)]
