"""Tar shards in the WebDataset layout, indexed without torch.

A shard is an uncompressed tar file; a sample is the run of consecutive members that share a
key (the member's path up to the first dot of its file name), one member per field:

    000017.png   000017.cls   000017.txt        (image, label, caption)

``members`` maps the item keys to extensions: ``image`` (one of several, ``png;jpg``),
``label`` (a class name or a class number, as text), and optional ``caption`` and ``text``.
Class names are ``classes`` when given, else ``classes.txt`` beside the first shard (one
name per line), else the labels found (names sorted; numbers name themselves).

:func:`read_index` reads every shard's member headers once and the small members (label,
strings); images are read later by offset, so that any item can be loaded without unpacking a
shard, and a loader worker can read its own shards front to back. The config resolver calls it
to count classes once (``data.num_classes``, then kept beside the shards: ``class_cache``) and
the dataset calls it: the result is kept per process, keyed by the files' stamps.
"""

from __future__ import annotations

import glob
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmvision.data.tar_reader import TarFormatError, tar_members  # noqa: F401
from lmvision.errors import UserError

DEFAULT_MEMBERS = {"image": "png;jpg;jpeg;webp", "label": "cls", "caption": "txt", "text": "text"}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Member:
    """Where one sample's image lies: shard file, byte offset and size; printed as
    ``shard:key`` in messages."""

    file: str
    key: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.file}:{self.key}"


@dataclass
class ShardIndex:
    """Every sample of the shards, in shard order: its image member, label, strings, split."""

    files: list[str]
    images: list[Member] = field(default_factory=list)
    shard_of: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    captions: list[str] | None = None
    texts: list[str] | None = None
    split_of: list[str] | None = None
    classes: list[str] = field(default_factory=list)
    label_index: list[int] = field(default_factory=list)


def expand(pattern: str) -> list[str]:
    """Brace expansion as WebDataset writes shard lists: ``{0000..0099}`` (zero-padded ranges)
    and ``{a,b}`` (choices), in order."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numbers:
        low, high = int(numbers.group(1)), int(numbers.group(2))
        width = len(numbers.group(1)) if numbers.group(1).startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(low, high + 1)]
    else:
        choices = body.split(",")
    out: list[str] = []
    for choice in choices:
        out += expand(pattern[:match.start()] + choice + pattern[match.end():])
    return out


def shard_files(pattern: Any, option: str = "data.shards") -> list[str]:
    """The files a shard pattern names (brace ranges, globs, or a list of them), in order."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
    if not patterns:
        raise UserError(f"{option}: no shard pattern given")
    files: list[str] = []
    for given in patterns:
        names = expand(str(given))
        if not names:
            raise UserError(f"{option}={given}: names no file (a range such as {{0003..0000}} "
                            "runs backwards)")
        for name in names:
            name = str(Path(name).expanduser())
            if glob.has_magic(name):
                found = sorted(glob.glob(name))
                if not found:
                    raise UserError(f"{option}={given}: no file matches {name}")
                files += found
            elif not Path(name).is_file():
                raise UserError(f"{option}={given}: {name}: no such file")
            else:
                files.append(name)
    return list(dict.fromkeys(files))


def split_patterns(shards: Any) -> dict[str, Any]:
    """``{split: pattern}``: ``all`` for one pattern (the datamodule draws the split), else the
    data's own train/val/test shards (train and test needed, val optional)."""
    if isinstance(shards, Mapping):
        shards = {str(k): v for k, v in shards.items() if v not in (None, "")}
        unknown = sorted(set(shards) - set(SPLITS))
        if unknown:
            raise UserError(f"data.shards.{unknown[0]}: splits are train, val and test")
        for name in ("train", "test"):
            if name not in shards:
                raise UserError(f"data.shards has no {name} shards (per split, train and test "
                                "are needed; val is optional)")
        return shards
    return {"all": shards}


def members_of(members: Mapping[str, Any] | None) -> dict[str, list[str] | None]:
    """The member extensions of each item key (``image`` may list several, ``png;jpg``)."""
    out = dict(DEFAULT_MEMBERS)
    for key, value in dict(members or {}).items():
        if key not in DEFAULT_MEMBERS:
            raise UserError(f"data.members.{key}: the item keys are "
                            f"{', '.join(DEFAULT_MEMBERS)}")
        out[key] = value
    for key in ("image", "label"):
        if not out[key]:
            raise UserError(f"data.members.{key} is needed (the extension of the {key} member)")
    return {k: [e.strip().lower().lstrip(".") for e in str(v).split(";") if e.strip()]
            if v else None for k, v in out.items()}


def _samples(path: str, read: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """The samples of one shard: (key, {extension: (offset, size)}) in order; the members whose
    extension is in ``read`` (labels, strings) are given as their content."""
    samples: list[tuple[str, dict[str, Any]]] = []
    keys: set[str] = set()
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            raise UserError(f"{path}: a gzip-compressed shard; lmvision reads uncompressed .tar "
                            "shards (images are compressed already), by offset")
        try:
            for name, offset, size in tar_members(f):
                folder, _, base = name.rpartition("/")
                if base.startswith("."):
                    continue
                stem, dot, ext = base.partition(".")
                if not dot or not stem:
                    raise UserError(f"{path}: member {name!r} has no key.extension name "
                                    "(WebDataset names members <key>.<field>)")
                key = f"{folder}/{stem}" if folder else stem
                if not samples or samples[-1][0] != key:
                    if key in keys:
                        raise UserError(f"{path}: the members of sample {key!r} are not "
                                        "together (WebDataset needs a sample's members one "
                                        "after another)")
                    keys.add(key)
                    samples.append((key, {}))
                fields = samples[-1][1]
                ext = ext.lower()
                if ext in fields:
                    raise UserError(f"{path}: sample {key!r} has two .{ext} members")
                if ext in read:  # labels and strings are small: read them now
                    f.seek(offset)
                    fields[ext] = f.read(size)
                else:
                    fields[ext] = (offset, size)
        except TarFormatError as e:
            raise UserError(f"{path}: not a tar file, or a damaged one ({e})") from None
    if not samples:
        raise UserError(f"{path}: an empty shard (no members)")
    return samples


def _text(path: str, key: str, ext: str, content: bytes) -> str:
    try:
        return content.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"{path}: member {key}.{ext} is not UTF-8 text") from None


def _stamp(files: list[str]) -> tuple:
    out = []
    for name in files:
        stat = Path(name).stat()
        out.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(out)


def read_index(shards: Any, members: Mapping[str, Any] | None = None,
               classes: list[str] | None = None) -> ShardIndex:
    """Index every sample of ``shards`` (a pattern, or one per split); see the module doc."""
    patterns = split_patterns(shards)
    by_split = {name: shard_files(p, "data.shards" if name == "all" else f"data.shards.{name}")
                for name, p in patterns.items()}
    fields = members_of(members)
    frozen = tuple((k, tuple(v) if v else None) for k, v in fields.items())
    stamp = tuple((name, _stamp(files)) for name, files in by_split.items())
    listed = classes_file(next(iter(by_split.values())))
    return _read_index(stamp, frozen, tuple(classes) if classes else None,
                       _stamp([str(listed)]) if listed.is_file() else None)


def classes_file(files: list[str]) -> Path:
    """Where the class names may be listed: ``classes.txt`` beside the first shard."""
    return Path(files[0]).parent / "classes.txt"


@lru_cache(maxsize=8)
def _read_index(stamp: tuple, frozen: tuple, classes: tuple | None,
                listed: tuple | None) -> ShardIndex:
    """The index (``listed``: the classes.txt stamp, so that editing it reads it again)."""
    fields = {k: list(v) if v else None for k, v in frozen}
    files = [name for _, split in stamp for name, *_ in split]
    repeated = [f for f, n in Counter(files).items() if n > 1]
    if repeated:
        raise UserError(f"data.shards: {repeated[0]} is in more than one split")
    index = ShardIndex(files=files)
    strings: dict[str, list[str | None]] = {"caption": [], "text": []}
    splits: list[str] = []
    seen: dict[str, str] = {}
    split_of = {name: split for split, split_files in stamp for name, *_ in split_files}
    small = {e for kind in ("label", "caption", "text") for e in fields[kind] or ()}
    for number, name in enumerate(files):
        split = split_of[name]
        for key, sample in _samples(name, small):
            if key in seen:
                raise UserError(f"{name}: sample key {key!r} is also in {seen[key]} (keys must "
                                "be unique across shards)")
            seen[key] = name
            image = next((sample[e] for e in fields["image"] if e in sample), None)
            if image is None:
                raise UserError(f"{name}: sample {key!r} has no image member "
                                f"(.{' .'.join(fields['image'])}; see data.members.image)")
            label = next((e for e in fields["label"] if e in sample), None)
            if label is None:
                raise UserError(f"{name}: sample {key!r} has no label member "
                                f"(.{' .'.join(fields['label'])}; see data.members.label)")
            index.images.append(Member(name, key, *image))
            index.shard_of.append(number)
            index.labels.append(_text(name, key, label, sample[label]))
            if not index.labels[-1]:
                raise UserError(f"{name}: sample {key!r} has an empty label")
            for kind in ("caption", "text"):
                found = next((e for e in fields[kind] or () if e in sample), None)
                value = _text(name, key, found, sample[found]) if found is not None else None
                if value == "":
                    raise UserError(f"{name}: sample {key!r} has an empty {kind}")
                strings[kind].append(value)
            splits.append(split)
    for kind, values in strings.items():
        having = [v is not None for v in values]
        if any(having) and not all(having):
            at = having.index(False)
            raise UserError(f"{index.images[at]}: no {kind} member, but other samples have one "
                            f"(give every sample a {kind}, or none)")
        if all(having):
            setattr(index, f"{kind}s", [str(v) for v in values])
    index.split_of = None if list(dict(stamp)) == ["all"] else splits
    index.classes, index.label_index = _classes(index, list(classes) if classes else None)
    return index


def _classes(index: ShardIndex, given: list[str] | None) -> tuple[list[str], list[int]]:
    """The class names and each sample's class number."""
    listed = classes_file(index.files)
    source = "data.classes"
    if given is None and listed.is_file():
        given = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        source = str(listed)
    numbers = all(label.isdecimal() and label.isascii() for label in index.labels)
    if given is None:
        if numbers:
            given = [str(i) for i in range(max(int(label) for label in index.labels) + 1)]
        else:
            given = sorted(set(index.labels))
    positions = {name: i for i, name in enumerate(given)}
    out = []
    for member, label in zip(index.images, index.labels):
        if label in positions:
            out.append(positions[label])
        elif numbers and int(label) < len(given):
            out.append(int(label))
        else:
            raise UserError(f"{member}: label {label!r} is not one of the {len(given)} classes "
                            f"of {source}")
    return list(given), out
