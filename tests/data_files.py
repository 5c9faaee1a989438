"""Data files in real formats, written by the tests: images in class folders (PNG, JPEG,
WebP), torchvision's CIFAR batches; and the overrides that point a config at them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def write_images(folder: Path, n: int = 12, color=(200, 0, 0), size=(24, 20)) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(len(str(folder)))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = np.clip(np.array(color)[None, None] + rng.normal(0, 20, (*size[::-1], 3)), 0, 255)
        path = folder / f"{i}.{('png', 'jpg', 'webp')[i % 3]}"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def write_cifar(root: Path, variant: str = "cifar10", per_batch: int = 8) -> Path:
    """torchvision's CIFAR layout, tiny: pickled batches of uint8 rows and a meta file."""
    import pickle

    rng = np.random.default_rng(0)
    if variant == "cifar10":
        folder, train, test, meta = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], \
            ["test_batch"], "batches.meta"
        names, label_key, names_key = [f"class{i}" for i in range(10)], b"labels", b"label_names"
    else:
        folder, train, test, meta = "cifar-100-python", ["train"], ["test"], "meta"
        names, label_key, names_key = [f"c{i}" for i in range(100)], b"fine_labels", \
            b"fine_label_names"
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    for name in train + test:
        n = per_batch * (10 if variant == "cifar100" else 1)
        labels = [int(i % len(names)) for i in range(n)]
        data = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({b"data": data, label_key: labels}, f)
    with open(base / meta, "wb") as f:
        pickle.dump({names_key: [n.encode() for n in names]}, f)
    return root


def image_folder(root: Path, n: int = 12) -> Path:
    for name, color in COLORS.items():
        write_images(root / name, n=n, color=color)
    return root


def jsonl_file(root: Path) -> Path:
    """Class folders of images and data.jsonl listing them, with captions and side text."""
    image_folder(root / "images")
    rows = [{"image": str(p.relative_to(root)), "label": p.parent.name,
             "caption": f"a {p.parent.name} patch", "text": "a patch of colour"}
            for p in sorted((root / "images").rglob("*.*"))]
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overrides_for(data: str, where: Path) -> list[str]:
    """What a data option that reads files needs here (nothing for the embedded ones)."""
    if data == "image_folder":
        return [f"data.root={image_folder(where / 'folder')}"]
    if data == "jsonl":
        return [f"data.path={jsonl_file(where / 'jsonl')}"]
    if data == "hf":
        return [f"data.dataset={hf_saved(where / 'hf')}", "data.columns.image=img",
                "data.columns.caption=caption"]
    if data == "coco_captions":
        return [f"data.{k}={v}" for k, v in coco_files(where / "coco").items()]
    if data == "webdataset":
        return [f"data.shards='{webdataset_shards(where / 'shards')}'"]
    if data in ("cifar10", "cifar100"):
        return [f"data.root={write_cifar(where / data, data)}"]
    return []


def coco_files(root: Path, labels: str | None = "csv") -> dict[str, Path]:
    """A COCO-format caption file (two captions per image) over an image folder, and labels."""
    image_folder(root / "images", n=6)
    files = sorted((root / "images").rglob("*.*"))
    images = [{"id": 100 + i, "file_name": str(p.relative_to(root / "images"))}
              for i, p in enumerate(files)]
    notes = [{"id": 1000 + 2 * i + k, "image_id": 100 + i, "caption": text}
             for i, p in enumerate(files)
             for k, text in enumerate((f"a {p.parent.name} patch", f"{p.parent.name} noise"))]
    out = {"captions_file": root / "captions.json", "image_root": root / "images"}
    out["captions_file"].write_text(json.dumps({"images": images, "annotations": notes}))
    if labels == "csv":
        out["labels_file"] = root / "labels.csv"
        out["labels_file"].write_text("image,label\n" + "".join(
            f"{100 + i},{p.parent.name}\n" for i, p in enumerate(files)))
    elif labels == "json":
        out["labels_file"] = root / "labels.json"
        out["labels_file"].write_text(json.dumps(
            {str(p.relative_to(root / "images")): p.parent.name for p in files}))
    return out


def hf_saved(root: Path, splits: bool = True) -> Path:
    """A `datasets` dataset with an Image column, a ClassLabel and captions, saved to disk."""
    import datasets

    files = sorted(image_folder(root / "images", n=6).rglob("*.*"))
    names = sorted(COLORS)
    rows = {"img": [str(p) for p in files], "label": [names.index(p.parent.name) for p in files],
            "caption": [f"a {p.parent.name} patch" for p in files]}
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=names),
                                  "caption": datasets.Value("string")})
    data = datasets.Dataset.from_dict(rows, features=features)
    if splits:
        data = data.train_test_split(test_size=0.25, seed=0)
    path = root / "saved"
    data.save_to_disk(str(path))
    return path


def webdataset_shards(root: Path, shards: int = 4, per_shard: int = 9, first: int = 0,
                      captions: bool = True, prefix: str = "shard") -> str:
    """Tar shards written by webdataset's own TarWriter: PNG and JPEG images of three colours,
    the class name in ``.cls``, a caption in ``.txt``; returns the brace pattern naming them.
    Sample keys are numbered from ``first`` (unique across calls that give different ones)."""
    import io

    import webdataset
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    names = sorted(COLORS)
    rng = np.random.default_rng(first)
    number = first
    for shard in range(shards):
        with webdataset.TarWriter(str(root / f"{prefix}-{shard:04d}.tar"), encoder=False) as tar:
            for _ in range(per_shard):
                name = names[number % len(names)]
                pixels = np.clip(np.array(COLORS[name])[None, None]
                                 + rng.normal(0, 20, (20, 24, 3)), 0, 255)
                ext = ("png", "jpg")[number % 2]
                data = io.BytesIO()
                Image.fromarray(pixels.astype(np.uint8)).save(data, "PNG" if ext == "png" else "JPEG")
                sample = {"__key__": f"{number:06d}", ext: data.getvalue(), "cls": name.encode()}
                if captions:
                    sample["txt"] = f"a {name} patch".encode()
                tar.write(sample)
                number += 1
    return str(root / f"{prefix}-{{0000..{shards - 1:04d}}}.tar")
