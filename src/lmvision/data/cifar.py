"""`cifar10`, `cifar100`: CIFAR from torchvision's files in a local folder.

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

the layout ``torchvision.datasets.CIFAR10(root, download=True)`` leaves. With
``download=true`` torchvision fetches it first (where a network is present). The data's own
split is kept: train (val drawn from it) and test. Items carry a caption, "a photo of a
<class>", for the captioner; there is no side text.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lmvision.data.protocol import DatasetBase

from lmvision import checks
from lmvision.errors import UserError

LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels",
                 b"fine_label_names"),
}


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, list[int]]:
    if not path.is_file():
        raise UserError(f"{path}: missing (expected torchvision's CIFAR layout; data.download=true "
                        "fetches it where a network is present)")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = [int(y) for y in batch[label_key]]
    except Exception as e:  # noqa: BLE001 - whatever is wrong, the file is not a CIFAR batch
        raise UserError(f"{path}: not a CIFAR batch ({type(e).__name__}: {e})") from None
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


class CifarDataset(DatasetBase):
    """Args:
        root: The folder holding torchvision's CIFAR folder.
        variant: ``cifar10`` or ``cifar100``.
        image_size: Side of the images served (32 native; others resized, bilinear).
        download: Fetch the files with torchvision first (needs a network).
    """

    # what lmvision-prefetch fetches for a node of this class: (kind, option, revision option)
    downloads = (("cifar", "root", "variant"),)

    channels = 3
    task = "multiclass"

    def __init__(self, root: str, variant: str = "cifar10", image_size: int = 32,
                 download: bool = False) -> None:
        if variant not in LAYOUT:
            raise UserError(f"data.variant={variant!r}: choose cifar10 or cifar100")
        checks.whole_number("image_size", image_size, minimum=8)
        root_dir = Path(str(root)).expanduser()
        if download:
            fetch(root_dir, variant)
        folder, train_files, test_files, meta, label_key, names_key = LAYOUT[variant]
        base = root_dir / folder
        if not base.is_dir():
            raise UserError(f"data.root={root}: no {folder}/ in it (torchvision's CIFAR layout); "
                            "data.download=true fetches it where a network is present")
        meta_path = base / meta
        if not meta_path.is_file():
            raise UserError(f"{meta_path}: missing (the class names)")
        with open(meta_path, "rb") as f:
            self.classes = [n.decode() if isinstance(n, bytes) else str(n)
                            for n in pickle.load(f, encoding="bytes")[names_key]]
        parts = [(read_batch(base / name, label_key), "train") for name in train_files]
        parts += [(read_batch(base / name, label_key), "test") for name in test_files]
        self.images = torch.from_numpy(np.concatenate([p[0][0] for p in parts]))
        self.labels = torch.tensor([y for p in parts for y in p[0][1]], dtype=torch.long)
        bad = ((self.labels < 0) | (self.labels >= len(self.classes))).nonzero()
        if len(bad):
            raise UserError(f"{base}: item {int(bad[0, 0])} has label {int(self.labels[bad[0, 0]])}, "
                            f"outside the {len(self.classes)} classes")
        splits = [s for (data, _), s in parts for _ in range(len(data))]
        self._split = {name: torch.tensor([i for i, s in enumerate(splits) if s == name])
                       for name in ("train", "test")}
        self.image_size = image_size
        self.captions = [f"a photo of a {self.classes[y]}" for y in self.labels.tolist()]
        self.texts = None  # no side text
        self.source = f"data.root={root} ({variant})"

    @property
    def split_indices(self) -> dict[str, torch.Tensor]:
        return self._split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        if self.image_size != 32:
            image = F.interpolate(image[None].float(), size=(self.image_size,) * 2,
                                  mode="bilinear", align_corners=False)[0]
            image = image.round().clamp(0, 255).to(torch.uint8)
        return {"image": image, "label": self.labels[index], "caption": self.captions[index]}

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def fetch(root: Path, variant: str) -> None:
    """torchvision's download (checksummed), with one clear error without a network."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if variant == "cifar10" else datasets.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - no network, a proxy, a full disk...
        raise UserError(f"data.download=true: could not fetch {variant} into {root} "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "on a machine without network, copy the folder there instead") from None
