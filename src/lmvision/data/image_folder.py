"""`image_folder`: a folder of class sub-folders of images (PNG, JPEG, WebP).

    <root>/<class>/<image>                       the datamodule draws train/val/test
    <root>/train/<class>/<image>, <root>/test/…  the data's own split (val/ optional: without
                                                 it, val is drawn from train/)

Class names are the sub-folders' names, sorted.
"""

from __future__ import annotations

import torch

from lmvision.data import catalog
from lmvision.data.image_files import ImageFilesDataset


class ImageFolderDataset(ImageFilesDataset):
    """Args:
        root: The folder.
        image_size: Side of the square images served (short side resized, centre crop).
        channels: 1 (grey) or 3 (RGB).
        on_bad_item: ``error`` or ``skip`` unreadable images.
        verify: Decode every image once when the dataset is built.
        cache_images: Keep the decoded, resized images in memory (small images).
    """

    def __init__(self, root: str, image_size: int, channels: int = 3, on_bad_item: str = "error",
                 verify: bool = True, cache_images: bool = False) -> None:
        classes = catalog.folder_classes(root)
        files = catalog.folder_files(root, classes)
        paths, labels, splits = [], [], []
        for split, rows in files.items():
            paths += [p for p, _ in rows]
            labels += [y for _, y in rows]
            splits += [split] * len(rows)
        own_split = "all" not in files
        super().__init__(paths, labels, classes, image_size, channels,
                         splits=splits if own_split else None, on_bad_item=on_bad_item,
                         verify=verify, cache_images=cache_images, source=f"data.root={root}")
        self.root = str(root)

    @property
    def split_indices(self) -> dict[str, torch.Tensor] | None:
        split = super().split_indices
        if split is not None and not len(split["val"]):
            del split["val"]  # drawn from train by the datamodule
        return split
