"""`jsonl`: one JSON object per line, the simplest way to bring your own data.

    {"image": "imgs/0001.png", "label": "cat", "caption": "a cat on a mat", "text": "...",
     "id": "0001", "split": "train"}

``image`` is a path relative to the JSONL file's folder (or to ``image_root``); ``label`` a
class name; ``caption``, ``text``, ``id`` (unique) and ``split`` (train/val/test; all rows or
none) are optional. Class names are ``classes`` when given, else the labels, sorted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lmvision.data import catalog
from lmvision.data.image_files import ImageFilesDataset
from lmvision.errors import UserError


class JsonlDataset(ImageFilesDataset):
    """Args:
        path: The JSONL file.
        image_size: Side of the square images served (short side resized, centre crop).
        channels: 1 (grey) or 3 (RGB).
        image_root: Folder the image paths are relative to (default: the file's folder).
        classes: The class names, in order (default: the labels found, sorted).
        on_bad_item: ``error`` or ``skip`` unreadable images.
        verify: Decode every image once when the dataset is built.
        cache_images: Keep the decoded, resized images in memory (small images).
    """

    def __init__(self, path: str, image_size: int, channels: int = 3,
                 image_root: str | None = None, classes: Sequence[str] | None = None,
                 on_bad_item: str = "error", verify: bool = True,
                 cache_images: bool = False) -> None:
        rows = catalog.jsonl_rows(path)
        names = catalog.jsonl_classes(path, list(classes) if classes else None)
        root = Path(str(image_root)).expanduser() if image_root else Path(str(path)).expanduser().parent
        for key in ("caption", "text", "split"):
            having = [r for r in rows if key in r]
            if having and len(having) != len(rows):
                lacking = next(r for r in rows if key not in r)
                raise UserError(f"{path}:{lacking['line']}: no {key!r}, but other lines have one "
                                f"(give every line a {key}, or none)")
        index = {name: i for i, name in enumerate(names)}
        super().__init__(
            [root / r["image"] for r in rows], [index[str(r["label"])] for r in rows], names,
            image_size, channels,
            captions=[r["caption"] for r in rows] if "caption" in rows[0] else None,
            texts=[r["text"] for r in rows] if "text" in rows[0] else None,
            splits=[r["split"] for r in rows] if "split" in rows[0] else None,
            on_bad_item=on_bad_item, verify=verify, cache_images=cache_images,
            source=f"data.path={path}",
            where=[f"{path}:{r['line']}" for r in rows])

    @property
    def split_indices(self) -> dict[str, torch.Tensor] | None:
        split = super().split_indices
        if split is not None:
            for name in ("train", "test"):
                if not len(split[name]):
                    raise UserError(f"{self.source}: no row has split {name!r} (with a split "
                                    "column, train and test are needed; val is optional)")
            if not len(split["val"]):
                del split["val"]
        return split
