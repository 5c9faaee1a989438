"""How a dataset is split into train, val and test, and the class-level restrictions of the
training data that every strategy gets.

* **Splits**: the data's own (``split_indices``; val drawn from train when it has none) or
  drawn from a permutation seeded by the run's seed alone.
* **Held-out classes** (``data.holdout_classes``): classes removed from training and validation
  entirely, for zero-shot evaluation. Test keeps its items of every class (the same test set as
  without a holdout), so test reports seen, unseen and their harmonic mean.
* **Few-shot training** (``data.shots_per_class=k``): ``k`` training images per class, drawn
  with the split seed, so two strategies run with the same seed train on the same images.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch

from lmvision import checks
from lmvision.errors import UserError


class DataConfigError(UserError):
    """Bad data options or bad data; raised before training starts."""

MAX_DRAWS = 10_000  # seeded redraws of a holdout until every part of a class stays seen


def choose_holdout(classes: Sequence[str], holdout, seed: int,
                   parts: Sequence[tuple[str, ...]] | None = None) -> list[int]:
    """Indices of the held-out classes, sorted.

    Args:
        classes: The dataset's class names.
        holdout: ``None``/empty (no holdout), a list of class names, or a fraction in (0, 1) of
            the classes, drawn with ``seed``.
        seed: Seed of the draw of a fraction.
        parts: For classes that combine attributes (e.g. ``("red", "circle")``), each class's
            parts: a drawn holdout then keeps every part in some seen class, so that an unseen
            combination is made of seen parts.
    """
    if holdout is None or (not isinstance(holdout, (str, float, int)) and len(holdout) == 0):
        return []
    if isinstance(holdout, bool):
        raise UserError(f"data.holdout_classes={holdout!r}: give a list of class names or a fraction")
    if isinstance(holdout, (int, float)):
        return _draw_fraction(list(classes), float(holdout), seed, parts)
    names = [holdout] if isinstance(holdout, str) else [str(n) for n in holdout]
    unknown = [n for n in names if n not in classes]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(classes), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UserError(f"data.holdout_classes names classes the data does not have: "
                        f"{', '.join(hints)}; its classes are {', '.join(classes)}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"data.holdout_classes lists {', '.join(duplicates)} more than once")
    if len(set(names)) >= len(classes):
        raise UserError("data.holdout_classes holds out every class: nothing is left to train on")
    return sorted(classes.index(n) for n in names)


def _draw_fraction(classes: list[str], fraction: float, seed: int,
                   parts: Sequence[tuple[str, ...]] | None) -> list[int]:
    count = round(fraction * len(classes))
    if not 0.0 < fraction < 1.0 or not 1 <= count < len(classes):
        raise UserError(f"data.holdout_classes={fraction}: a fraction must hold out at least one "
                        f"of the {len(classes)} classes and keep at least one")
    generator = torch.Generator().manual_seed(int(seed))
    for _ in range(MAX_DRAWS):
        chosen = sorted(torch.randperm(len(classes), generator=generator)[:count].tolist())
        if parts is None or _parts_stay_seen(parts, chosen):
            return chosen
    raise UserError(f"data.holdout_classes={fraction}: no draw of {count} of {len(classes)} classes "
                    "keeps every part of a class (e.g. every colour and every shape) in training; "
                    "hold out fewer classes")


def _parts_stay_seen(parts: Sequence[tuple[str, ...]], unseen: list[int]) -> bool:
    seen_parts = {p for i, ps in enumerate(parts) if i not in unseen for p in ps}
    return all(p in seen_parts for ps in parts for p in ps)


def restrict_split(split: dict[str, torch.Tensor], labels: torch.Tensor, classes: Sequence[str],
                   unseen: list[int], shots: int | None, seed: int) -> dict[str, torch.Tensor]:
    """The split with held-out classes removed from train and val, and ``shots`` training items
    per class kept (drawn with ``seed``); test is left as it is."""
    out = dict(split)
    if unseen:
        held = torch.tensor(unseen)
        for name in ("train", "val"):
            keep = ~torch.isin(labels[split[name]], held)
            out[name] = split[name][keep]
    if shots is None:
        return out
    checks.whole_number("shots_per_class", shots)
    generator = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    train, kept = out["train"], []
    train_labels = labels[train]
    for c, name in enumerate(classes):
        if c in unseen:
            continue
        items = train[train_labels == c]
        if len(items) < shots:
            raise UserError(f"data.shots_per_class={shots}: the training split has only "
                            f"{len(items)} images of class {name!r}; use fewer shots or more data")
        kept.append(items[torch.randperm(len(items), generator=generator)[:shots]])
    out["train"] = torch.cat(kept).sort().values
    return out


def own_split(split: dict[str, torch.Tensor], val_fraction: float, seed: int) -> dict:
    """The data's own split; without ``val``, a seeded ``val_fraction`` of train becomes val."""
    out = {name: torch.as_tensor(index).sort().values for name, index in split.items()}
    if "val" not in out:
        train = out["train"]
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(int(seed)))
        n_val = max(1, round(len(train) * val_fraction))
        out["val"], out["train"] = train[perm[:n_val]].sort().values, train[perm[n_val:]].sort().values
    for name in ("train", "val", "test"):
        if not len(out[name]):
            raise DataConfigError(f"the data's own {name} split is empty")
    return out


def seeded_split(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Indices of train/val/test drawn from a permutation seeded by ``seed`` alone."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return {
        "test": perm[:n_test].sort().values,
        "val": perm[n_test:n_test + n_val].sort().values,
        "train": perm[n_test + n_val:].sort().values,
    }


def missing_classes(dataset, split: dict, classes: list[str], task: str,
                    held_out: Sequence[int] = ()) -> list[str]:
    """One message per split that has no item of some class (single-label data only); the
    ``held_out`` classes are absent from train and val on purpose."""
    labels = dataset.labels
    if task != "multiclass" or labels is None:
        return []
    labels = torch.as_tensor(labels)
    messages = []
    for name in ("train", "val", "test"):
        present = set(labels[split[name]].tolist())
        if name != "test":
            present |= set(held_out)
        absent = [c for i, c in enumerate(classes) if i not in present]
        if absent:
            shown = ", ".join(absent[:8]) + (", ..." if len(absent) > 8 else "")
            messages.append(
                f"the {name} split ({len(split[name])} items) has no example of {len(absent)} of "
                f"{len(classes)} classes ({shown}); its metrics say nothing about them. Use more "
                "data (e.g. data.num_images) or larger split fractions")
    return messages


