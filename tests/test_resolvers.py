"""Resolving a config reads no data once its classes were counted: ``data.num_classes`` of
shards, a JSONL file, a labels file or a Hugging Face dataset comes from a small file beside
the data (or under ``paths.cache_dir``), checked against the files' names, sizes and
modification times; a changed file is counted again; bad data still stops at the first count
with one UserError naming it."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import pytest
from conftest import run_cli
from data_files import coco_files, hf_saved, jsonl_file, webdataset_shards

from lmvision.data import catalog, tar_shards
from lmvision.errors import UserError


def resolved_num_classes(make_cfg, *overrides: str) -> int:
    """Compose as the entry points do and resolve the whole config (as validation does)."""
    from lmvision.config.build import config_container

    return config_container(make_cfg(*overrides), resolve=True)["data"]["num_classes"]


@pytest.fixture
def no_data_reads(monkeypatch):
    """``forbid(*paths)``: from now on opening those files, indexing shards or reading JSONL
    rows fails the test; as in a fresh process, nothing is kept in memory from earlier."""
    def forbid(*paths: Path):
        tar_shards._read_index.cache_clear()  # a new process: no index kept in memory
        banned = {os.path.abspath(p) for p in paths}
        real_open = builtins.open

        def guarded_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) in banned:
                raise AssertionError(f"composing read the data: opened {file}")
            return real_open(file, *args, **kwargs)

        def refuse(*args, **kwargs):
            raise AssertionError("composing read the data")

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(tar_shards, "read_index", refuse)
        monkeypatch.setattr(tar_shards, "_samples", refuse)
        monkeypatch.setattr(catalog, "jsonl_rows", refuse)
        monkeypatch.setattr(catalog, "coco_labels", refuse)
    return forbid


def shard_paths(pattern: str) -> list[str]:
    return tar_shards.shard_files(pattern)


def test_webdataset_is_indexed_once_then_never_while_composing(make_cfg, tmp_path, no_data_reads):
    pattern = webdataset_shards(tmp_path / "shards")
    args = ("data=webdataset", f"data.shards='{pattern}'")
    assert resolved_num_classes(make_cfg, *args) == 3
    assert list((tmp_path / "shards").glob(".lmvision-classes-*.json"))  # beside the shards
    no_data_reads(*shard_paths(pattern))
    assert resolved_num_classes(make_cfg, *args) == 3
    assert make_cfg(*args).data.num_classes == 3


def test_a_changed_or_added_shard_or_classes_txt_is_indexed_again(make_cfg, tmp_path):
    root = tmp_path / "shards"
    webdataset_shards(root, shards=2)
    args = ("data=webdataset", f"data.shards={root}/shard-*.tar")
    assert resolved_num_classes(make_cfg, *args) == 3
    (root / "classes.txt").write_text("blue\ngreen\nred\npurple\n")  # a new file beside them
    assert resolved_num_classes(make_cfg, *args) == 4
    (root / "classes.txt").unlink()
    webdataset_shards(root, shards=1, first=100, prefix="shard-x")  # a new shard matching the glob
    assert resolved_num_classes(make_cfg, *args) == 3
    # one shard rewritten with a class the others lack: its size and time change
    import webdataset

    with webdataset.TarWriter(str(root / "shard-0001.tar"), encoder=False) as tar:
        tar.write({"__key__": "z1", "png": b"not read here", "cls": b"purple", "txt": b"a patch"})
    assert resolved_num_classes(make_cfg, *args) == 4


def test_bad_shards_still_stop_composing_naming_the_shard_and_nothing_is_kept(make_cfg, tmp_path):
    root = tmp_path / "shards"
    webdataset_shards(root, shards=2)
    (root / "shard-0002.tar").write_bytes(b"not a tar file at all" * 40)
    args = ("data=webdataset", f"data.shards={root}/shard-*.tar")
    for _ in range(2):  # not cached: the second composition says the same
        with pytest.raises(Exception) as caught:
            resolved_num_classes(make_cfg, *args)
        assert "shard-0002.tar: not a tar file" in str(caught.value)
    assert not list(root.glob(".lmvision-classes-*.json"))
    (root / "shard-0002.tar").unlink()
    assert resolved_num_classes(make_cfg, *args) == 3


def test_jsonl_rows_are_read_once_then_never_while_composing(make_cfg, tmp_path, no_data_reads):
    path = jsonl_file(tmp_path / "jsonl")
    args = ("data=jsonl", f"data.path={path}")
    assert resolved_num_classes(make_cfg, *args) == 3
    no_data_reads(path)
    assert resolved_num_classes(make_cfg, *args) == 3


def test_jsonl_options_are_part_of_the_key(make_cfg, tmp_path):
    path = jsonl_file(tmp_path / "jsonl")
    args = ("data=jsonl", f"data.path={path}")
    assert resolved_num_classes(make_cfg, *args) == 3
    assert resolved_num_classes(make_cfg, *args, "data.classes=[blue,green,red,purple]") == 4
    assert resolved_num_classes(make_cfg, *args) == 3


def test_a_changed_jsonl_file_is_read_again_and_its_errors_name_the_line(make_cfg, tmp_path):
    path = jsonl_file(tmp_path / "jsonl")
    args = ("data=jsonl", f"data.path={path}")
    assert resolved_num_classes(make_cfg, *args) == 3
    rows = path.read_text()
    path.write_text(rows + json.dumps({"image": "images/red/0.png", "label": "purple"}) + "\n")
    assert resolved_num_classes(make_cfg, *args) == 4
    path.write_text(rows + '{"image": "images/red/0.png", "label": \n')
    with pytest.raises(Exception) as caught:
        resolved_num_classes(make_cfg, *args)
    assert f"{path}:{len(rows.splitlines()) + 1}: not JSON" in str(caught.value)
    # the agreement with the dataset: the same function counts for both
    path.write_text(rows)
    assert resolved_num_classes(make_cfg, *args) == len(catalog.jsonl_classes(path))


def test_a_read_only_data_folder_keeps_the_count_in_the_cache_dir(make_cfg, tmp_path,
                                                                 monkeypatch, no_data_reads):
    from lmvision.data import class_cache

    path = jsonl_file(tmp_path / "jsonl")
    real_write = class_cache.write_json

    def read_only(place, data):
        if Path(place).parent == path.parent:
            raise PermissionError(13, "Permission denied", str(place))
        real_write(place, data)

    monkeypatch.setattr(class_cache, "write_json", read_only)
    cache = tmp_path / "cache"
    args = ("data=jsonl", f"data.path={path}", f"paths.cache_dir={cache}")
    assert resolved_num_classes(make_cfg, *args) == 3
    assert not list(path.parent.glob(".lmvision-classes-*")) and list(cache.glob("classes/*.json"))
    no_data_reads(path)
    assert resolved_num_classes(make_cfg, *args) == 3


def test_coco_labels_file_is_read_once(make_cfg, tmp_path, no_data_reads):
    files = coco_files(tmp_path / "coco")
    args = ("data=coco_captions", *(f"data.{k}={v}" for k, v in files.items()))
    assert resolved_num_classes(make_cfg, *args) == 3
    no_data_reads(files["labels_file"])
    assert resolved_num_classes(make_cfg, *args) == 3


def test_a_saved_dataset_with_class_labels_is_never_loaded_while_composing(make_cfg, tmp_path,
                                                                           monkeypatch):
    saved = hf_saved(tmp_path / "hf")
    from lmvision.data import hf

    def refuse(*args, **kwargs):
        raise AssertionError("composing loaded the dataset")

    monkeypatch.setattr(hf, "load", refuse)
    assert resolved_num_classes(make_cfg, "data=hf", f"data.dataset={saved}",
                                "data.columns.image=img") == 3


def test_a_saved_dataset_with_plain_labels_is_read_once(make_cfg, tmp_path, monkeypatch):
    import datasets

    saved = tmp_path / "plain"
    datasets.Dataset.from_dict({"img": [b"x"] * 5, "label": list("abcab")}).save_to_disk(str(saved))
    args = ("data=hf", f"data.dataset={saved}", "data.columns.image=img")
    assert resolved_num_classes(make_cfg, *args) == 3
    from lmvision.data import hf

    def refuse(*args, **kwargs):
        raise AssertionError("composing loaded the dataset")

    with monkeypatch.context() as patched:
        patched.setattr(hf, "load", refuse)
        assert resolved_num_classes(make_cfg, *args) == 3
    datasets.Dataset.from_dict({"img": [b"x"] * 2, "label": list("ad")}).save_to_disk(str(saved))
    assert resolved_num_classes(make_cfg, *args) == 2  # rewritten: read again


def test_a_missing_label_column_still_stops_composing(make_cfg, tmp_path):
    saved = hf_saved(tmp_path / "hf")
    with pytest.raises(Exception) as caught:
        resolved_num_classes(make_cfg, "data=hf", f"data.dataset={saved}",
                             "data.columns.label=kind")
    assert "data.columns.label='kind': no such column" in str(caught.value)


def test_a_hub_dataset_is_counted_from_its_builder_info(make_cfg, monkeypatch):
    """Offline with the dataset in the cache, ``load_dataset_builder`` gives the features; the
    revision asked for is the one counted."""
    import datasets

    from lmvision.data import class_cache, hf

    class_cache._hub_info.cache_clear()
    asked = []

    class Builder:
        hash = "abc"

        def __init__(self, name, revision=None):
            asked.append((name, revision))
            self.info = datasets.DatasetInfo(features=datasets.Features(
                {"img": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])}))

    def refuse(*args, **kwargs):
        raise AssertionError("composing loaded the dataset")

    monkeypatch.setattr(datasets, "load_dataset_builder", Builder)
    monkeypatch.setattr(hf, "load", refuse)
    assert resolved_num_classes(make_cfg, "data=hf", "data.dataset=someone/pets",
                                "data.revision=v2") == 2
    assert asked == [("someone/pets", "v2")]  # once per process, however often it resolves


def test_resolving_from_the_command_line_counts_once(tmp_path):
    path = jsonl_file(tmp_path / "jsonl")
    args = ["-m", "lmvision.train", "data=jsonl", f"data.path={path}", "--cfg", "job", "--resolve"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "num_classes: 3" in result.stdout
    [cached] = path.parent.glob(".lmvision-classes-*.json")
    entry = json.loads(cached.read_text())
    assert entry["classes"] == ["blue", "green", "red"]
    assert entry["files"] == [[str(path), path.stat().st_size, path.stat().st_mtime_ns]]


def test_unknown_kind_and_missing_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not 'csv'"):
        catalog.num_classes("csv", tmp_path)
    with pytest.raises(UserError, match="no such file"):
        catalog.num_classes("jsonl", tmp_path / "none.jsonl")
    with pytest.raises(UserError, match="no such file"):
        catalog.num_classes("webdataset", str(tmp_path / "s-{0000..0001}.tar"))
