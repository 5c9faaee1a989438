"""`hf`: any Hugging Face `datasets` dataset, by hub name or a ``save_to_disk`` folder.

    lmvision-train data=hf data.dataset=/data/flowers_saved data.columns.image=img
    lmvision-train data=hf data.dataset=cifar10 data.columns.image=img   # from the hub or its cache

``columns`` maps the item keys to the dataset's columns (``image``, ``label``, and optional
``caption``, ``text``). Class names come from a ``ClassLabel`` label column, else from the
labels found (sorted). A dataset with several splits keeps them (``validation`` is val; a
missing one is drawn from train); a single split is split by the datamodule.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lmvision.data.protocol import DatasetBase

from lmvision import checks, compat
from lmvision.errors import UserError

SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val",
               "test": "test"}


def load(name: str, revision: str | None = None):
    """A Dataset or DatasetDict: ``load_from_disk`` for a folder, else ``load_dataset``."""
    try:
        import datasets
    except ImportError:
        raise UserError("data=hf needs the datasets package: pip install 'lmvision[data]'") from None
    folder = Path(str(name)).expanduser()
    try:
        if folder.exists():
            return datasets.load_from_disk(str(folder))
        return datasets.load_dataset(str(name), revision=revision)
    except FileNotFoundError as e:
        raise UserError(f"data.dataset={name}: not a saved dataset ({str(e).splitlines()[0]})") from None
    except Exception as e:  # noqa: BLE001 - the hub unreachable, a name that does not exist...
        if folder.exists():
            raise
        raise UserError(f"data.dataset={name}: cannot load it ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); offline, give a folder "
                        "written by save_to_disk, or fetch it first with lmvision-prefetch") from None


def parts(loaded) -> list[tuple[str, Any]]:
    """``[(lmvision split or 'all', Dataset)]``."""
    if hasattr(loaded, "keys") and not hasattr(loaded, "features"):  # a DatasetDict
        out = []
        for key in loaded.keys():
            if key not in SPLIT_NAMES:
                raise UserError(f"the dataset's split {key!r} is not one of "
                                f"{', '.join(SPLIT_NAMES)}")
            out.append((SPLIT_NAMES[key], loaded[key]))
        return out
    return [("all", loaded)]


def class_names(pieces: list[tuple[str, Any]], label: str) -> list[str]:
    feature = pieces[0][1].features.get(label)
    names = getattr(feature, "names", None)
    if names:
        return [str(n) for n in names]
    return sorted({str(v) for _, piece in pieces for v in piece[label]})


def check_columns(pieces: list[tuple[str, Any]], columns: dict[str, str | None], name: str) -> None:
    for key, column in columns.items():
        if column is None:
            continue
        for split, piece in pieces:
            if column not in piece.column_names:
                raise UserError(f"data.columns.{key}={column!r}: no such column in {name} "
                                f"({split}: {', '.join(piece.column_names)})")


def num_classes(name: str, label: str = "label") -> int:
    pieces = parts(load(name))
    check_columns(pieces, {"label": label}, name)
    return len(class_names(pieces, label))


class HFDataset(DatasetBase):
    """Args:
        name: A hub name or a folder written by ``save_to_disk``.
        columns: Item key -> column (``image``, ``label``; ``caption``, ``text`` optional).
        image_size: Side of the square images served (short side resized, centre crop).
        channels: 1 (grey) or 3 (RGB).
        revision: A hub revision.
    """

    # what lmvision-prefetch fetches for a node of this class: (kind, option, revision option)
    downloads = (("dataset", "name", "revision"),)

    task = "multiclass"

    def __init__(self, name: str, columns: dict[str, str | None], image_size: int,
                 channels: int = 3, revision: str | None = None) -> None:
        checks.whole_number("image_size", image_size)
        if channels not in (1, 3):
            raise UserError(f"data.channels={channels!r}: choose 1 (grey) or 3 (RGB)")
        columns = dict(columns)
        for key in ("image", "label"):
            if not columns.get(key):
                raise UserError(f"data.columns.{key}: name the dataset's {key} column")
        self.pieces = parts(load(name, revision))
        check_columns(self.pieces, columns, str(name))
        self.columns, self.image_size, self.channels = columns, image_size, channels
        self.classes = class_names(self.pieces, columns["label"])
        index = {c: i for i, c in enumerate(self.classes)}
        named = getattr(self.pieces[0][1].features.get(columns["label"]), "names", None)
        labels, splits, self._where = [], [], []
        for split, piece in self.pieces:
            values = piece[columns["label"]]
            labels += [int(v) if named else index[str(v)] for v in values]
            splits += [split] * len(piece)
            self._where += [(piece, i) for i in range(len(piece))]
        self.labels = torch.tensor(labels, dtype=torch.long)
        self._splits = splits
        for key in ("caption", "text"):
            column = columns.get(key)
            strings = None
            if column:
                strings = [str(s) for _, piece in self.pieces for s in piece[column]]
            setattr(self, f"{key}s", strings)
        self.source = f"data.dataset={name}"
        self.name = str(name)

    @property
    def split_indices(self) -> dict[str, torch.Tensor] | None:
        if self._splits[0] == "all":
            return None
        found = set(self._splits)
        if not {"train", "test"} <= found:
            raise UserError(f"{self.source}: has the splits {', '.join(sorted(found))}; with "
                            "several splits, train and test are needed")
        out = {s: torch.tensor([i for i, x in enumerate(self._splits) if x == s])
               for s in ("train", "val", "test") if s in found}
        return out

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        from lmvision.data.image_files import fit_square, item_with_strings

        piece, i = self._where[index]
        image = piece[i][self.columns["image"]]
        if not hasattr(image, "convert"):  # raw bytes or an array
            from PIL import Image

            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        return item_with_strings(self, index, fit_square(image, self.image_size, self.channels))

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for _, piece in self.pieces:
            h.update(compat.dataset_fingerprint(piece).encode())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]
