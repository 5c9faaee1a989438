"""Datasets of image files on disk (``image_folder``, ``jsonl``): the shared reading part.

Images are decoded in the loader's workers (``data.num_workers``), converted to the data's
channels (``L`` or ``RGB``), resized so the short side is ``image_size`` and centre-cropped to
a square, and served as uint8 tensors ``(C, H, W)`` like the embedded datasets.

With ``cache_images=true`` the decoded, resized images are kept in memory: each file is decoded
once per run rather than once per epoch (for datasets of small images that fit in memory).

Every file is decoded once when the dataset is built (``verify=true``), so that an unreadable
or truncated image stops the run before training, naming the file. With
``on_bad_item=skip`` such files are left out instead, counted, and listed in ``skipped``
(the run writes them to ``skipped_items.json`` in its directory).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from lmvision.data.protocol import DatasetBase

from lmvision import checks
from lmvision.errors import UserError

ON_BAD_ITEM = ("error", "skip")


def read_image(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """Decode, convert, resize (short side) and centre-crop one image: uint8 ``(C, S, S)``."""
    from PIL import Image

    with Image.open(path) as image:
        return fit_square(image, image_size, channels)


def fit_square(image, image_size: int, channels: int) -> torch.Tensor:
    """A PIL image converted to ``channels``, its short side resized to ``image_size``
    (bilinear) and centre-cropped: uint8 ``(C, S, S)``."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    scale = image_size / min(width, height)
    if scale != 1.0:
        size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(size, Image.BILINEAR)
        width, height = image.size
    left, top = (width - image_size) // 2, (height - image_size) // 2
    if (width, height) != (image_size, image_size):
        image = image.crop((left, top, left + image_size, top + image_size))
    tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return tensor[None] if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def item_with_strings(dataset, index: int, image: torch.Tensor) -> dict:
    """Item ``index``: its image, its label, and its caption and text where the data has them."""
    item = {"image": image, "label": dataset.labels[index]}
    if dataset.captions is not None:
        item["caption"] = dataset.captions[index]
    if dataset.texts is not None:
        item["text"] = dataset.texts[index]
    return item


DECODE_ERRORS = (OSError, SyntaxError, ValueError)  # what PIL raises on a bad file


def reason(error: BaseException) -> str:
    """Why an image could not be decoded, in words (without PIL's object addresses)."""
    from PIL import UnidentifiedImageError

    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, UnidentifiedImageError):
        return "not an image PIL can read"
    return f"cannot decode it ({str(error).splitlines()[0] if str(error) else type(error).__name__})"


def unreadable(path) -> str | None:
    """Why ``path`` (or a file object) is not a readable image (``None`` when it is)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except DECODE_ERRORS as e:
        return reason(e)
    return None


class ImageFilesDataset(DatasetBase):
    """Items read from image files, with labels and optional strings.

    Args:
        paths: One image file per item (a ``Path``; a subclass may give other locators and
            read them in :meth:`image_file`).
        labels: Class index per item.
        classes: Class names.
        image_size: Side of the square images served.
        channels: 1 (grey) or 3 (RGB).
        captions: Optional caption per item; texts: optional side text per item.
        splits: Optional split name per item (``train``/``val``/``test``): the data's own split.
        on_bad_item: ``error`` (stop, naming the file) or ``skip`` unreadable files.
        verify: Decode every file now (else a bad file fails when it is loaded).
        cache_images: Keep every image decoded and resized in memory (for small images: each
            file is decoded once per run instead of once per epoch).
        source: What the items came from (folder or file), for messages.
        where: Per item, where it was declared (``file:line``), for messages.
    """

    task = "multiclass"

    def __init__(self, paths: list[Path], labels: list[int], classes: list[str], image_size: int,
                 channels: int, captions: list[str] | None = None, texts: list[str] | None = None,
                 splits: list[str] | None = None, on_bad_item: str = "error", verify: bool = True,
                 source: str = "", where: list[str] | None = None,
                 cache_images: bool = False) -> None:
        checks.whole_number("image_size", image_size)
        if channels not in (1, 3):
            raise UserError(f"data.channels={channels!r}: image files are read as 1 (grey) or "
                            "3 (RGB) channels")
        if on_bad_item not in ON_BAD_ITEM:
            raise UserError(f"data.on_bad_item={on_bad_item!r}: choose error or skip")
        keep = list(range(len(paths)))
        self.skipped: list[dict[str, str]] = []
        if verify:
            keep = []
            for i, path in enumerate(paths):
                why = unreadable(self.image_file(path))
                if why is None:
                    keep.append(i)
                    continue
                named = f"{where[i]}: {path}" if where else str(path)
                if on_bad_item == "error":
                    raise UserError(f"{named}: {why} (data.on_bad_item=skip leaves such "
                                    "files out)")
                self.skipped.append({"file": str(path), "reason": why})
        if not keep:
            raise UserError(f"{source}: no readable image in it")
        self.kept = keep  # positions in the given lists of the items served
        self.paths = [paths[i] for i in keep]
        self.labels = torch.tensor([int(labels[i]) for i in keep], dtype=torch.long)
        self.classes = list(classes)
        self.image_size, self.channels = image_size, channels
        self.captions = [captions[i] for i in keep] if captions is not None else None
        self.texts = [texts[i] for i in keep] if texts is not None else None
        self.split_of = [splits[i] for i in keep] if splits is not None else None
        self.source = source
        self.cached = None
        if cache_images:
            self.cached = torch.stack([read_image(self.image_file(p), image_size, channels)
                                       for p in self.paths])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = self.cached[index] if self.cached is not None else self.read(index)
        return item_with_strings(self, index, image)

    def read(self, index: int) -> torch.Tensor:
        """Item ``index``'s image, decoded; a file that cannot be (``verify=false`` let it
        through) is one UserError naming it."""
        locator = self.paths[index]
        try:
            return read_image(self.image_file(locator), self.image_size, self.channels)
        except DECODE_ERRORS as e:
            raise UserError(f"{locator}: {reason(e)} (data.verify=true finds such files before "
                            "training)") from None

    def image_file(self, locator):
        """What PIL opens for one item: here its path (a subclass may read it elsewhere)."""
        return locator

    @property
    def split_indices(self) -> dict[str, torch.Tensor] | None:
        """The data's own train/val/test split (``None``: the datamodule draws one)."""
        if self.split_of is None:
            return None
        return {name: torch.tensor([i for i, s in enumerate(self.split_of) if s == name],
                                   dtype=torch.long) for name in ("train", "val", "test")}

    @property
    def fingerprint(self) -> str:
        """Files (names, sizes, modification times), labels and strings."""
        h = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist()):
            stat = path.stat()
            h.update(f"{path.name}\t{stat.st_size}\t{int(stat.st_mtime)}\t{label}\n".encode())
        for strings in (self.captions, self.texts):
            h.update("\n".join(strings or []).encode())
        return h.hexdigest()[:16]
