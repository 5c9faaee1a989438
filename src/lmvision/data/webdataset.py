"""`webdataset`: tar shards in the WebDataset layout, the format large datasets are shipped in.

    lmvision-train data=webdataset "data.shards='/data/pets/train-{0000..0099}.tar'"
    lmvision-train data=webdataset \\
        'data.shards={train: "/data/train-*.tar", test: "/data/test-*.tar"}'

Each sample is the run of members sharing a key (``000017.png``, ``000017.cls``,
``000017.txt``); ``data.members`` says which extension holds what (:mod:`tar_shards`).

Shards are indexed once at start (member headers, labels and strings), then images are read by
offset. The datamodule serves shard data in shard order: each epoch it shuffles the shards,
gives every DDP process a contiguous run of them and every loader worker a contiguous run of
its process's share, shuffled within a window (:mod:`shard_sampler`); each worker reads its own
shards front to back. Shards must lie on a file system the processes can read (a local disk
or a cluster's shared one); URLs (``s3://``, ``pipe:``) are not read.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lmvision.data import tar_shards
from lmvision.data.image_files import ImageFilesDataset
from lmvision.data.tar_shards import Member


class WebDatasetShards(ImageFilesDataset):
    """Args:
        shards: A shard pattern (``{0000..0099}`` ranges, globs, or a list) for one pool that
            the datamodule splits, or ``{train: ..., val: ..., test: ...}`` (val optional).
        image_size: Side of the square images served (short side resized, centre crop).
        channels: 1 (grey) or 3 (RGB).
        classes: Class names in order (default: ``classes.txt`` beside the shards, else the
            labels found).
        members: Item key -> member extension(s): ``image`` (``png;jpg;jpeg;webp``), ``label``
            (``cls``), ``caption`` (``txt``), ``text`` (``text``); optional ones may be absent.
        on_bad_item: ``error`` or ``skip`` undecodable images.
        verify: Decode every image once when the dataset is built (reads every shard).
        cache_images: Keep the decoded, resized images in memory (small images).
    """

    def __init__(self, shards: Any, image_size: int, channels: int = 3,
                 classes: Sequence[str] | None = None, members: Mapping[str, Any] | None = None,
                 on_bad_item: str = "error", verify: bool = True,
                 cache_images: bool = False) -> None:
        index = tar_shards.read_index(shards, members, list(classes) if classes else None)
        self.files = index.files
        self._handles: dict[str, Any] = {}
        super().__init__(index.images, index.label_index, index.classes, image_size, channels,
                         captions=index.captions, texts=index.texts, splits=index.split_of,
                         on_bad_item=on_bad_item, verify=verify, cache_images=cache_images,
                         source=f"data.shards={shards}")
        self.shard_of = torch.tensor([index.shard_of[i] for i in self.kept], dtype=torch.long)
        self.close()

    def image_file(self, member: Member) -> io.BytesIO:
        """The image member's bytes, read by offset with ``pread``: a file opened before the
        loader's workers were forked is shared with them, and ``pread`` moves no file position
        that another process could be using."""
        fd = self._handles.get(member.file)
        if fd is None:
            if len(self._handles) >= 16:
                self.close()
            fd = self._handles[member.file] = os.open(member.file, os.O_RDONLY)
        data = os.pread(fd, member.size, member.offset)
        if len(data) < member.size:
            raise OSError(f"the shard ends inside this member ({len(data)} of {member.size} "
                          "bytes)")
        return io.BytesIO(data)

    @property
    def split_indices(self) -> dict[str, torch.Tensor] | None:
        """The data's own split when shards are given per split (val optional)."""
        split = super().split_indices
        if split is not None and not len(split["val"]):
            del split["val"]
        return split

    def close(self) -> None:
        for fd in getattr(self, "_handles", {}).values():
            os.close(fd)
        self._handles = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # each loader worker opens its own files
        return state

    def __del__(self) -> None:
        self.close()

    @property
    def fingerprint(self) -> str:
        """Shards (names, sizes, modification times), labels and strings."""
        h = hashlib.sha256()
        for name in self.files:
            stat = Path(name).stat()
            h.update(f"{Path(name).name}\t{stat.st_size}\t{int(stat.st_mtime)}\n".encode())
        h.update(",".join(map(str, self.labels.tolist())).encode())
        for strings in (self.captions, self.texts):
            h.update("\n".join(strings or []).encode())
        return h.hexdigest()[:16]
