"""What a file-based dataset holds, read without torch: its class names and rows.

Config resolvers count classes with these (``data.num_classes`` of a folder or a JSONL file;
once: see :mod:`lmvision.data.class_cache`), and the datasets call the same functions, so the
two always agree. Every problem is one :class:`~lmvision.errors.UserError` naming the folder,
file, line or option.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmvision.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
SPLITS = ("train", "val", "test")


def split_folders(root: Path) -> list[str]:
    """The split sub-folders of an image folder (``train``/``val``/``test``), if it has them."""
    return [s for s in SPLITS if (root / s).is_dir()]


def folder_classes(root: str | Path) -> list[str]:
    """The class names of an image folder: its sub-folders (of ``train/`` when split)."""
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={root}: no such folder")
    splits = split_folders(root)
    if splits and "train" not in splits:
        raise UserError(f"data.root={root}: has {', '.join(splits)}/ but no train/ folder")
    base = root / "train" if splits else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"data.root={base}: no class folders in it (expected <root>/<class>/"
                        "<image>, or <root>/train/<class>/<image>)")
    return classes


def folder_files(root: str | Path, classes: list[str]) -> dict[str, list[tuple[Path, int]]]:
    """Per split (``all`` when the folder is not split) the image files and their labels."""
    root = Path(str(root)).expanduser()
    splits = split_folders(root) or ["all"]
    out: dict[str, list[tuple[Path, int]]] = {}
    for split in splits:
        base = root if split == "all" else root / split
        present = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = [c for c in present if c not in classes]
        if unknown:
            raise UserError(f"{base}: class folder {unknown[0]!r} is not one of train/'s classes "
                            f"({', '.join(classes)})")
        rows = []
        for label, name in enumerate(classes):
            folder = base / name
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) \
                if folder.is_dir() else []
            if not files and split in ("all", "train"):
                raise UserError(f"{folder}: an empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} "
                                "images); remove it or add images")
            rows += [(f, label) for f in files]
        out[split] = rows
    return out


def jsonl_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file: one JSON object per line with ``image`` and ``label``
    (optional ``text``, ``caption``, ``id``, ``split``); blank lines are skipped."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise UserError(f"data.path={path}: no such file")
    rows, ids = [], {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in ("image", "label"):
                if key not in row:
                    raise UserError(f"{where}: no {key!r} key (each line needs image and label)")
            image = row["image"]
            if not isinstance(image, str) or not image.strip():
                raise UserError(f"{where}: 'image' must be a file path, got {image!r}")
            if "://" in image or Path(image).is_absolute():
                raise UserError(f"{where}: image {image!r} must be a path relative to the JSONL "
                                "file's folder (or data.image_root), not a URL or absolute path")
            if not isinstance(row["label"], (str, int)) or isinstance(row["label"], bool):
                raise UserError(f"{where}: 'label' must be a class name, got {row['label']!r}")
            for key in ("text", "caption"):
                if key in row and (not isinstance(row[key], str) or not row[key].strip()):
                    raise UserError(f"{where}: {key!r} is empty")
            if "split" in row and row["split"] not in SPLITS:
                raise UserError(f"{where}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
            if "id" in row:
                if row["id"] in ids:
                    raise UserError(f"{where}: duplicate id {row['id']!r} (first on line "
                                    f"{ids[row['id']]})")
                ids[row["id"]] = number
            rows.append({**row, "line": number})
    if not rows:
        raise UserError(f"data.path={path}: no rows in it")
    return rows


def jsonl_classes(path: str | Path, classes: list[str] | None = None) -> list[str]:
    """The class names of a JSONL dataset: ``classes`` when given (every label must be one of
    them), else its labels, sorted."""
    rows = jsonl_rows(path)
    if classes:
        known = [str(c) for c in classes]
        for row in rows:
            if str(row["label"]) not in known:
                raise UserError(f"{path}:{row['line']}: label {row['label']!r} is not in "
                                f"data.classes ({', '.join(known)})")
        return known
    return sorted({str(row["label"]) for row in rows})


def num_classes(kind: str, where: Any, classes: Any = None, members: Any = None,
                cache_dir: Any = None) -> int:
    """``${lmv.num_classes_in:image_folder,<root>}`` / ``${lmv.num_classes_in:jsonl,<path>}``;
    for ``webdataset``, ``where`` is the shard pattern(s) and ``members`` the member mapping;
    for ``hf``, ``classes`` is the label column and ``members`` the revision.

    Reads no data once counted: see :mod:`lmvision.data.class_cache` (``cache_dir`` is where
    the count is kept when the data's folder is not writable)."""
    from omegaconf import OmegaConf

    from lmvision.data.class_cache import absolute, cached_classes, hf_classes

    where, classes, members = [OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                               for v in (where, classes, members)]
    if kind == "image_folder":  # a folder listing: checking a cache would list it too
        return len(folder_classes(where))
    if kind == "jsonl":
        given = [str(c) for c in classes] if classes else None
        return len(cached_classes("jsonl", {"path": absolute(where), "classes": given}, [where],
                                  lambda: jsonl_classes(where, given), cache_dir))
    if kind == "hf":
        return len(hf_classes(str(where), str(classes or "label"), members, cache_dir))
    if kind == "coco_captions":  # `where` is the labels file (or null)
        if where in (None, "None", "null", ""):
            return len(coco_classes(None))
        return len(cached_classes("coco_captions", {"labels_file": absolute(where)}, [where],
                                  lambda: coco_classes(where), cache_dir))
    if kind == "webdataset":
        from lmvision.data import tar_shards

        patterns = tar_shards.split_patterns(where)
        files = [f for split, pattern in patterns.items() for f in tar_shards.shard_files(
            pattern, "data.shards" if split == "all" else f"data.shards.{split}")]
        listed = tar_shards.classes_file(files)  # classes.txt: its stamp, or its absence
        given = [str(c) for c in classes] if classes else None
        key = {"shards": {split: [absolute(p) for p in ([p] if isinstance(p, str) else p)]
                          for split, p in patterns.items()},
               "members": tar_shards.members_of(members), "classes": given}
        return len(cached_classes(
            "webdataset", key, files + ([listed] if listed.is_file() else []),
            lambda: tar_shards.read_index(where, members, list(classes) if classes else None)
            .classes, cache_dir))
    raise UserError(f"lmv.num_classes_in knows image_folder, jsonl, hf, coco_captions and "
                    f"webdataset, not {kind!r}")


def coco_captions(path: str | Path) -> tuple[list[dict], dict[int, list[str]]]:
    """The images of a COCO-format caption file and each one's captions (in file order)."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise UserError(f"data.captions_file={path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UserError(f"{path}: not a COCO caption file (expected 'images' and 'annotations' "
                        "lists)")
    images, seen = [], set()
    for n, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise UserError(f"{path}: images[{n}] needs an 'id' and a 'file_name'")
        if image["id"] in seen:
            raise UserError(f"{path}: images[{n}] repeats image id {image['id']!r}")
        seen.add(image["id"])
        images.append(image)
    captions: dict[int, list[str]] = {image["id"]: [] for image in images}
    for n, note in enumerate(data["annotations"]):
        if not isinstance(note, dict) or "image_id" not in note or "caption" not in note:
            raise UserError(f"{path}: annotations[{n}] needs an 'image_id' and a 'caption'")
        if note["image_id"] not in captions:
            raise UserError(f"{path}: annotations[{n}] (id {note.get('id')!r}) refers to image id "
                            f"{note['image_id']!r}, which is not in 'images'")
        if not isinstance(note["caption"], str) or not note["caption"].strip():
            raise UserError(f"{path}: annotations[{n}] (id {note.get('id')!r}) has an empty caption")
        captions[note["image_id"]].append(note["caption"].strip())
    bare = [i["id"] for i in images if not captions[i["id"]]]
    if bare:
        raise UserError(f"{path}: image id {bare[0]!r} has no caption ({len(bare)} images have "
                        "none); remove them from 'images' or add captions")
    return images, captions


def coco_labels(path: str | Path | None, images: list[dict] | None = None) -> dict[str, str]:
    """Labels by image id (as a string) from a JSON object ``{image id or file name: label}``
    or a CSV with columns ``image`` (id or file name) and ``label``; {} without a file."""
    if not path:
        return {}
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise UserError(f"data.labels_file={path}: no such file")
    if path.suffix.lower() == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "label"} <= set(reader.fieldnames):
                raise UserError(f"{path}: a labels CSV needs the columns image and label")
            raw = {}
            for n, row in enumerate(reader, start=2):
                if not (row["label"] or "").strip():
                    raise UserError(f"{path}:{n}: an empty label")
                raw[str(row["image"])] = row["label"].strip()
    else:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a JSON object {{image id or file name: label}}")
        raw = {str(k): str(v) for k, v in raw.items()}
    if images is None:
        return raw
    by_id = {}
    names = {str(i["file_name"]): str(i["id"]) for i in images}
    ids = {str(i["id"]) for i in images}
    for key, label in raw.items():
        if key in ids:
            by_id[key] = label
        elif key in names:
            by_id[names[key]] = label
        else:
            raise UserError(f"{path}: labels image {key!r}, which is not in the caption file")
    missing = [str(i["id"]) for i in images if str(i["id"]) not in by_id]
    if missing:
        raise UserError(f"{path}: no label for image id {missing[0]} ({len(missing)} images have "
                        "none)")
    return by_id


def coco_classes(labels_file: str | Path | None) -> list[str]:
    labels = coco_labels(labels_file)
    return sorted(set(labels.values())) if labels else ["image"]
