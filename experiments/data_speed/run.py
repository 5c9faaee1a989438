"""Data-loading speed: lmvision's `image_folder` loader against a plain torchvision loop, and
its `webdataset` loader against webdataset's own pipeline.

Both read the same image files (PNG, then JPEG) from class folders, decode, resize the short
side, centre-crop, flip at random, convert to float and normalise, in batches of 64, with 0, 1
and 2 loader workers (persistent). lmvision's side is the real training loader of
``ImageDataModule`` over ``ImageFolderDataset`` (its seeded sampler, per-item augmentation
seeds and dict batches); the plain side is ``torchvision.datasets.ImageFolder`` with a
``DataLoader``, on the same training items. Each measurement is one epoch after a warm-up
epoch, the median of ``--repeats``, the two sides alternating. Also printed: the one-off
check that decodes every file when the dataset is built (``data.verify``).

Then the same files are written into tar shards (webdataset's ``TarWriter``) and lmvision's
``data=webdataset`` training loader (``WebDatasetShards``, shard batches per worker) is timed
against ``webdataset.WebDataset`` (shard shuffle, split by worker, shuffle buffer, PIL decoding,
the same transform, batched in the workers), with 0, 1 and 2 workers.

    .venv/bin/python experiments/data_speed/run.py                  # full study
    .venv/bin/python experiments/data_speed/run.py --write-readme   # ... and update README.md
    .venv/bin/python experiments/data_speed/run.py --quick          # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

from lmvision.data.datamodule import ImageDataModule
from lmvision.data.image_folder import ImageFolderDataset
from lmvision.data.webdataset import WebDatasetShards
from lmvision.files import write_json

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import studies  # noqa: E402  (experiments/studies.py)

TARGET = 0.9  # lmvision images/s over plain images/s, 2 workers


def write_images(root: Path, fmt: str, classes: int, per_class: int, size: tuple[int, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        for i in range(per_class):
            noise = rng.normal(0, 40, (size[1], size[0], 3))
            pixels = np.clip(base[None, None] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.{fmt}", quality=90)


def lmvision_loader(root: Path, args, workers: int,
                    cached: bool = False) -> tuple[DataLoader, list[int], float]:
    started = time.perf_counter()
    data = ImageFolderDataset(str(root), image_size=args.image_size, verify=True,
                              cache_images=cached)
    verify_seconds = time.perf_counter() - started
    dm = ImageDataModule(data, num_classes=len(data.classes), image_size=args.image_size,
                         channels=3, batch_size=args.batch_size, num_workers=workers,
                         augment=[v2.RandomHorizontalFlip()], split_seed=0)
    dm.setup("fit")
    return dm.train_dataloader(), dm.split["train"].tolist(), verify_seconds


def plain_loader(root: Path, args, workers: int, train_items: list[int]) -> DataLoader:
    transform = v2.Compose([v2.Resize(args.image_size), v2.CenterCrop(args.image_size),
                            v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                            v2.RandomHorizontalFlip(), v2.Normalize([0.5] * 3, [0.5] * 3)])
    data = Subset(datasets.ImageFolder(str(root), transform=transform), train_items)
    return DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0)


def write_shards(root: Path, shards: Path, count: int) -> list[str]:
    """The same image files, in ``count`` tar shards (webdataset's TarWriter), in a random
    order (as shards are written from a shuffled list): key, image, class number."""
    import webdataset

    files = sorted(p for p in root.rglob("*.*") if p.is_file())
    order = np.random.default_rng(0).permutation(len(files))
    classes = sorted(p.name for p in root.iterdir())
    shards.mkdir(parents=True, exist_ok=True)
    names = []
    for number, part in enumerate(np.array_split(order, count)):
        names.append(str(shards / f"train-{number:04d}.tar"))
        with webdataset.TarWriter(names[-1], encoder=False) as tar:
            for i in part.tolist():
                path = files[i]
                tar.write({"__key__": f"{i:06d}", path.suffix[1:]: path.read_bytes(),
                           "cls": str(classes.index(path.parent.name)).encode()})
    return names


def lmvision_shard_loader(shards: list[str], args, workers: int) -> tuple[DataLoader, float]:
    """What ``lmvision-train data=webdataset`` iterates: every shard but the last for training
    (val drawn from it), the last for test."""
    started = time.perf_counter()
    data = WebDatasetShards({"train": shards[:-1], "test": shards[-1:]},
                            image_size=args.image_size, verify=False)
    index_seconds = time.perf_counter() - started
    dm = ImageDataModule(data, num_classes=len(data.classes), image_size=args.image_size,
                         channels=3, batch_size=args.batch_size, num_workers=workers,
                         augment=[v2.RandomHorizontalFlip()], split_seed=0)
    dm.setup("fit")
    return dm.train_dataloader(), index_seconds


def plain_shard_loader(shards: list[str], args, workers: int) -> DataLoader:
    """webdataset's own pipeline on the same training shards: shard shuffle, split by worker,
    a 1,000-item shuffle buffer, PIL decoding, the same transform, batched in the workers."""
    import webdataset

    transform = v2.Compose([v2.Resize(args.image_size), v2.CenterCrop(args.image_size),
                            v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                            v2.RandomHorizontalFlip(), v2.Normalize([0.5] * 3, [0.5] * 3)])
    data = (webdataset.WebDataset(shards[:-1], shardshuffle=len(shards), seed=0)
            .shuffle(1000).decode("pil").to_tuple("png;jpg", "cls")
            .map_tuple(transform, int).batched(args.batch_size))
    return DataLoader(data, batch_size=None, num_workers=workers, persistent_workers=workers > 0)


def index_times(shards: list[str]) -> dict:
    """Indexing the shards (every member's header, every label): lmvision's reader against
    Python's ``tarfile`` listing the same members and reading the same labels; best of 3."""
    import tarfile

    from lmvision.data import tar_shards

    times: dict[str, list[float]] = {"lmvision": [], "tarfile": []}
    for _ in range(3):
        tar_shards._read_index.cache_clear()
        started = time.perf_counter()
        samples = len(tar_shards.read_index(shards).images)
        times["lmvision"].append(time.perf_counter() - started)
        started = time.perf_counter()
        for path in shards:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.name.endswith(".cls"):
                        tar.extractfile(member).read()
        times["tarfile"].append(time.perf_counter() - started)
    out = {side: min(values) for side, values in times.items()}
    out["samples"] = samples
    return out


def measure_shards(shards: list[str], args, workers: int) -> dict:
    ours, index_seconds = lmvision_shard_loader(shards, args, workers)
    plain = plain_shard_loader(shards, args, workers)
    result = compare(ours, plain, args.repeats)
    result["index_seconds"] = index_seconds
    return result


def epoch_rate(loader: DataLoader, epoch: int) -> float:
    for sampler in (loader.sampler, loader.batch_sampler):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
    started, seen = time.perf_counter(), 0
    for batch in loader:
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        seen += len(images)
    return seen / (time.perf_counter() - started)


def compare(ours: DataLoader, plain: DataLoader, repeats: int) -> dict:
    """Median images/s of each side over ``repeats`` epochs after a warm-up, alternating."""
    for loader in (ours, plain):
        epoch_rate(loader, 0)  # warm-up: workers start, files enter the page cache
    rates: dict[str, list[float]] = {"lmvision": [], "plain": []}
    for repeat in range(repeats):
        order = (("lmvision", ours), ("plain", plain))
        for side, loader in order if repeat % 2 == 0 else order[::-1]:
            rates[side].append(epoch_rate(loader, repeat + 1))
    result = {side: float(np.median(values)) for side, values in rates.items()}
    result["ratio"] = result["lmvision"] / result["plain"]
    return result


def measure(root: Path, args, workers: int, cached: bool = False) -> dict:
    ours, train_items, verify_seconds = lmvision_loader(root, args, workers, cached)
    plain = plain_loader(root, args, workers, train_items)
    result = compare(ours, plain, args.repeats)
    result["verify_seconds"] = verify_seconds
    result["items"] = len(train_items)
    return result


def readme_text(results: dict, args) -> str:
    lines = [studies.environment_line(), "",
             f"{args.classes} classes × {args.per_class} images of {args.width}×{args.height} "
             f"pixels, served at {args.image_size}×{args.image_size}, batch {args.batch_size}, "
             f"{results['items']} training images per epoch; median of {args.repeats} epochs.",
             "", "| format | workers | lmvision (images/s) | plain torchvision (images/s) | ratio |",
             "|---|---|---|---|---|"]
    for fmt in args.formats:
        for workers in args.workers:
            r = results[fmt][str(workers)]
            lines.append(f"| {fmt.upper()} | {workers} | {r['lmvision']:,.0f} | {r['plain']:,.0f} "
                         f"| {r['ratio']:.2f}× |")
    lines += ["", "With `data.cache_images=true` (images decoded and resized once, kept in memory; "
              "0 workers) against the plain loop decoding every epoch (0 workers): " +
              ", ".join(f"{fmt.upper()} {results[fmt]['cached']['lmvision']:,.0f} vs "
                        f"{results[fmt]['cached']['plain']:,.0f} images/s "
                        f"({results[fmt]['cached']['ratio']:.1f}×)" for fmt in args.formats) + "."]
    if "webdataset" in results:
        lines += ["", f"`data=webdataset`: the same files in {args.shards} tar shards "
                  "(webdataset's TarWriter; all but one for training), lmvision's training "
                  "loader against webdataset's own pipeline (shard shuffle, split by worker, "
                  "shuffle buffer of 1,000, PIL decoding, batched in the workers):", "",
                  "| format | workers | lmvision (images/s) | webdataset (images/s) | ratio |",
                  "|---|---|---|---|---|"]
        for fmt in args.formats:
            for workers in args.workers:
                r = results["webdataset"][fmt][str(workers)]
                lines.append(f"| {fmt.upper()} | {workers} | {r['lmvision']:,.0f} | "
                             f"{r['plain']:,.0f} | {r['ratio']:.2f}× |")
        lines += ["", "Indexing the shards when the dataset is built (every member's header "
                  "and every label, `data.verify=false`), best of 3, against Python's `tarfile` "
                  "listing the same members and reading the same labels: " + ", ".join(
                      f"{fmt.upper()} {r['samples']:,} samples in {r['lmvision']:.3f} s "
                      f"({r['samples'] / r['lmvision']:,.0f} samples/s) vs {r['tarfile']:.3f} s "
                      f"({r['tarfile'] / r['lmvision']:.1f}× faster)"
                      for fmt, r in results["index"].items()) + "."]
    lines += ["", "Decoding every file once when the dataset is built (`data.verify=true`): " +
              ", ".join(f"{fmt.upper()} {results[fmt]['0']['verify_seconds']:.2f} s"
                        for fmt in args.formats) + "."]
    verdicts = [f"{fmt.upper()} {results[fmt]['2']['ratio']:.2f}×" for fmt in args.formats
                if "2" in results[fmt]]
    if verdicts:
        passed = all(results[fmt]["2"]["ratio"] >= TARGET for fmt in args.formats)
        lines += ["", f"Target (2 workers, ratio ≥ {TARGET}): {', '.join(verdicts)}: "
                  f"**{'PASS' if passed else 'FAIL'}**."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=80)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--formats", nargs="+", default=["png", "jpg"])
    parser.add_argument("--shards", type=int, default=9, help="tar shards for data=webdataset")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny data, 1 repeat")
    parser.add_argument("--summary", type=Path, default=HERE / "results.json")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.classes, args.per_class, args.repeats, args.workers = 2, 24, 1, [0, 2]
    torch.set_num_threads(1)  # the loaders' work is per image; keep the comparison to them
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats:
            root = Path(tmp) / fmt
            write_images(root, fmt, args.classes, args.per_class, (args.width, args.height))
            results[fmt] = {}
            for workers in args.workers:
                r = measure(root, args, workers)
                results[fmt][str(workers)] = r
                print(f"{fmt} workers={workers}: lmvision {r['lmvision']:.0f} images/s, plain "
                      f"{r['plain']:.0f} images/s, ratio {r['ratio']:.3f}", flush=True)
                results["items"] = r["items"]
            r = measure(root, args, 0, cached=True)  # data.cache_images=true
            results[fmt]["cached"] = r
            print(f"{fmt} cached, workers=0: lmvision {r['lmvision']:.0f} images/s, plain "
                  f"{r['plain']:.0f} images/s, ratio {r['ratio']:.3f}", flush=True)
            shards = write_shards(root, Path(tmp) / f"{fmt}-shards", args.shards)
            r = index_times(shards)
            results.setdefault("index", {})[fmt] = r
            print(f"{fmt} index of {r['samples']} samples: lmvision {r['lmvision']:.3f} s, "
                  f"tarfile {r['tarfile']:.3f} s", flush=True)
            for workers in args.workers:
                r = measure_shards(shards, args, workers)
                results.setdefault("webdataset", {}).setdefault(fmt, {})[str(workers)] = r
                print(f"{fmt} webdataset workers={workers}: lmvision {r['lmvision']:.0f} "
                      f"images/s, webdataset {r['plain']:.0f} images/s, ratio "
                      f"{r['ratio']:.3f}", flush=True)
    write_json(args.summary, results)
    text = readme_text(results, args)
    print(text)
    if args.write_readme:
        studies.write_results(HERE / "README.md", text)


if __name__ == "__main__":
    main()
