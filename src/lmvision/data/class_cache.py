"""Class names counted once and kept beside the data, so that composing a config reads no data.

``data.num_classes`` is resolved whenever a config is: validation before training, ``--cfg job
--resolve``, each job of a sweep, each DDP process. Counting the classes of files reads them
(every shard's headers, every JSONL row, a labels file, a dataset's label column), so
:func:`cached_classes` counts once and writes the class names to a small JSON file beside the
data (``.lmvision-classes-<key>.json`` in the folder of the first file), or under
``<cache dir>/classes/`` where that folder is not writable. Later it reads that file only,
after comparing the files' names, sizes and modification times with those it counted from
(a listing and a ``stat`` per file): a changed, added or removed file is counted again.
Counting raises what the data's own reader raises; nothing is written for bad data.

A Hugging Face dataset's classes come from its metadata where it has them (a ``ClassLabel``
column): a ``save_to_disk`` folder's JSON, or a hub dataset's builder info.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmvision.files import read_json, write_json

VERSION = 1
ABOUT = ("lmvision: the class names of this data, counted once so that composing a config need "
         "not read the data again; safe to delete (it is counted again)")
HF_SPLITS = ("train", "validation", "valid", "val", "test")  # as lmvision.data.hf.SPLIT_NAMES


def absolute(path: Any) -> str:
    """``path`` (``~`` expanded) as an absolute path: the key of data named relatively."""
    return os.path.abspath(os.path.expanduser(str(path)))


def stamp(files: list[str | Path]) -> list[list]:
    """``[[absolute path, size, modification time (ns)], ...]``; OSError for a missing file."""
    out = []
    for name in files:
        stat = os.stat(name)
        out.append([absolute(name), stat.st_size, stat.st_mtime_ns])
    return out


def cached_classes(kind: str, key: dict[str, Any], files: list[str | Path],
                   count: Callable[[], list[str]], cache_dir: Any = None,
                   beside: str | Path | None = None) -> list[str]:
    """The class names ``count()`` gives for ``files`` (read with the options in ``key``),
    from the cache file when none of ``files`` changed since; else counted, then cached.

    ``beside``: the folder to write the cache file in (default: that of the first file; None
    and no files: only ``cache_dir``)."""
    try:
        stamps = stamp(files)  # taken before counting: a file changed meanwhile counts again
    except OSError:
        return count()  # a file is missing: the reader says which, as it always did
    key = json.loads(json.dumps({"version": VERSION, "kind": kind, **key}, default=str))
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    if beside is None and files:
        beside = Path(absolute(files[0])).parent
    places = [Path(beside) / f".lmvision-classes-{name}.json"] if beside is not None else []
    if cache_dir not in (None, "", "None"):
        places.append(Path(absolute(cache_dir)) / "classes" / f"{name}.json")
    for place in places:
        entry = read_json(place)
        if isinstance(entry, dict) and entry.get("key") == key and entry.get("files") == stamps \
                and isinstance(entry.get("classes"), list):
            return [str(c) for c in entry["classes"]]
    classes = [str(c) for c in count()]
    entry = {"about": ABOUT, "key": key, "files": stamps, "classes": classes}
    for place in places:
        try:
            write_json(place, entry)
            os.chmod(place, 0o644)  # others reading the same data may use it too
            break
        except OSError:  # a read-only data folder: the cache directory instead
            continue
    return classes


def saved_label_names(folder: Path, label: str) -> list[str] | None:
    """The ``ClassLabel`` names of column ``label`` of a ``save_to_disk`` folder, from its JSON
    metadata only; None where the metadata does not say (not a saved dataset, no such column,
    not a ClassLabel, a split lmvision does not know): then the dataset is read."""
    splits = read_json(folder / "dataset_dict.json")
    if isinstance(splits, dict):  # a DatasetDict: one folder per split
        names = splits.get("splits")
        if not isinstance(names, list) or not names or any(s not in HF_SPLITS for s in names):
            return None
        infos = [folder / str(s) / "dataset_info.json" for s in names]
    else:
        infos = [folder / "dataset_info.json"]
    found = []
    for info in infos:
        data = read_json(info)
        features = data.get("features") if isinstance(data, dict) else None
        feature = features.get(label) if isinstance(features, dict) else None
        if not isinstance(feature, dict) or feature.get("_type") != "ClassLabel" \
                or not isinstance(feature.get("names"), list) or not feature["names"]:
            return None
        found.append([str(n) for n in feature["names"]])
    return found[0]


def hf_classes(name: str, label: str, revision: Any = None, cache_dir: Any = None) -> list[str]:
    """The class names of a Hugging Face dataset's ``label`` column without loading it where
    its metadata names them; else read once (:func:`lmvision.data.hf.class_names`) and cached:
    a folder by its files' stamps, a hub dataset by its name, revision and builder hash."""
    revision = None if revision in (None, "", "None", "null") else str(revision)
    folder = Path(str(name)).expanduser()
    if folder.is_dir():
        names = saved_label_names(folder, label)
        if names is not None:
            return names
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        return cached_classes("hf", {"dataset": absolute(folder), "label": label}, files,
                              lambda: _read_hf(str(name), label, revision), cache_dir,
                              beside=Path(absolute(folder)).parent)
    features, version = _hub_info(str(name), revision) if not folder.exists() else (None, None)
    names = getattr((features or {}).get(label), "names", None)
    if names:
        return [str(n) for n in names]
    if version:
        key = {"dataset": str(name), "revision": revision, "label": label, "hash": version}
        return cached_classes("hf", key, [], lambda: _read_hf(str(name), label, revision),
                              cache_dir)
    return _read_hf(str(name), label, revision)


@lru_cache(maxsize=16)
def _hub_info(name: str, revision: str | None) -> tuple[Any, str | None]:
    """A hub dataset's features and builder hash, from the hub's (or its cache's) metadata, no
    data downloaded; asked once per process (a config resolves ``data.num_classes`` once per
    place that interpolates it). ``(None, None)`` offline or unknown: loading it says why."""
    try:
        import datasets

        builder = datasets.load_dataset_builder(name, revision=revision)
    except Exception:  # noqa: BLE001 - offline, a name that does not exist...
        return None, None
    version = getattr(builder, "hash", None)
    return builder.info.features, str(version) if version else None


def _read_hf(name: str, label: str, revision: str | None) -> list[str]:
    """Load the dataset (memory-mapped) and read its class names, as the dataset does."""
    from lmvision.data import hf

    pieces = hf.parts(hf.load(name, revision))
    hf.check_columns(pieces, {"label": label}, name)
    return hf.class_names(pieces, label)
