"""Datasets read from files (image_folder, jsonl) and the bad-input catalogue.

Fixtures are real files in real formats written here: PNG and JPEG images in class folders,
a JSONL file. Each catalogue case is a bad file or option a user could give; each must stop the
run before training with a UserError (which the entry points print as one line, exit status 2:
checked from the command line for one case below) naming the file, line or option, and mark
the run record failed. The cases and their messages are listed in docs/bad_input.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_inline
from data_files import COLORS, hf_saved, write_cifar, write_images

from lmvision.errors import UserError
from lmvision.train import train

FAST = ["logger=csv", "debug=fdr", "data.image_size=16", "data.num_workers=0"]


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "pets"
    for name, color in COLORS.items():
        write_images(root / name, color=color)
    return root


@pytest.fixture
def jsonl(tmp_path, folder) -> Path:
    rows = [{"image": str(p.relative_to(tmp_path)), "label": p.parent.name, "id": str(i),
             "caption": f"a {p.parent.name} patch", "text": "a patch of colour"}
            for i, p in enumerate(sorted(folder.rglob("*.*")))]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def record(tmp_path) -> dict:
    return json.loads((tmp_path / "run" / "run.json").read_text())


def test_image_folder_trains_with_class_names_from_the_folders(make_cfg, tmp_path, folder):
    metrics = train(make_cfg("data=image_folder", f"data.root={folder}", *FAST))
    assert "test/acc" in metrics
    from lmvision.data.image_folder import ImageFolderDataset

    data = ImageFolderDataset(str(folder), image_size=16)
    assert data.classes == ["blue", "green", "red"] and len(data) == 36
    item = data[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype.is_floating_point is False
    assert record(tmp_path)["data_fingerprint"] == data.fingerprint


def test_image_folder_with_its_own_split(make_cfg, tmp_path):
    from lmvision.data.datamodule import ImageDataModule
    from lmvision.data.image_folder import ImageFolderDataset

    root = tmp_path / "split"
    for split, n in (("train", 10), ("test", 4)):
        for name, color in COLORS.items():
            write_images(root / split / name, n=n, color=color)
    data = ImageFolderDataset(str(root), image_size=8, channels=1)
    module = ImageDataModule(data, num_classes=3, image_size=8, channels=1, val_fraction=0.2)
    sizes = {k: len(v) for k, v in module.split.items()}
    assert sizes == {"train": 24, "val": 6, "test": 12}  # val drawn from train/
    test_paths = {str(data.paths[i]) for i in module.split["test"].tolist()}
    assert all("/test/" in p for p in test_paths)
    assert data[0]["image"].shape == (1, 8, 8)
    train(make_cfg("data=image_folder", f"data.root={root}", *FAST))


def test_jsonl_with_captions_trains_a_classifier_and_a_captioner(make_cfg, tmp_path, jsonl):
    train(make_cfg("data=jsonl", f"data.path={jsonl}", *FAST))
    metrics = train(make_cfg("experiment=captioner_shapes", "data=jsonl", f"data.path={jsonl}",
                             *FAST, output_dir=tmp_path / "cap"))
    assert "test/bleu4" in metrics


def test_fusion_reads_the_jsonl_side_text(make_cfg, tmp_path, jsonl):
    metrics = train(make_cfg("experiment=fusion_shapes", "text_encoder=scratch", "data=jsonl",
                             f"data.path={jsonl}", *FAST))
    assert "test/acc_no_text" in metrics


def test_cached_images_are_those_read_from_the_files(tmp_path, folder):
    from lmvision.data.image_folder import ImageFolderDataset

    read = ImageFolderDataset(str(folder), image_size=16)
    cached = ImageFolderDataset(str(folder), image_size=16, cache_images=True)
    assert cached.cached.shape == (36, 3, 16, 16)
    for i in (0, 17, 35):
        assert torch.equal(read[i]["image"], cached[i]["image"])


def test_skip_leaves_unreadable_images_out_and_lists_them(make_cfg, tmp_path, folder):
    bad = folder / "red" / "broken.png"
    bad.write_bytes(b"not a png")
    train(make_cfg("data=image_folder", f"data.root={folder}", "data.on_bad_item=skip", *FAST))
    skipped = json.loads((tmp_path / "run" / "skipped_items.json").read_text())
    assert [s["file"] for s in skipped] == [str(bad)] and "not an image" in skipped[0]["reason"]
    assert record(tmp_path)["data_skipped"] == 1


def jsonl_of(tmp_path, lines: list[str]) -> Path:
    write_images(tmp_path / "imgs", n=2)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = '{"image": "imgs/0.png", "label": "a"}'
GOOD2 = '{"image": "imgs/1.jpg", "label": "b"}'


def folder_case(make):
    def build(tmp_path, folder):
        return ["data=image_folder", f"data.root={make(tmp_path, folder)}"]
    return build


def jsonl_case(*lines: str, extra: tuple[str, ...] = ()):
    def build(tmp_path, folder):
        return ["data=jsonl", f"data.path={jsonl_of(tmp_path, list(lines))}", *extra]
    return build


def empty_class(tmp_path, folder):
    (folder / "purple").mkdir()
    return folder


def unreadable(tmp_path, folder):
    (folder / "red" / "0.png").write_bytes(b"\x89PNG not really")
    return folder


def truncated(tmp_path, folder):
    path = folder / "blue" / "0.png"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return folder


def no_classes(tmp_path, folder):
    root = tmp_path / "flat"
    root.mkdir()
    write_images(root / ".." / "flat_images", n=1)
    return root


def no_train_split(tmp_path, folder):
    root = tmp_path / "splitted"
    write_images(root / "test" / "a", n=2)
    return root


def unknown_test_class(tmp_path, folder):
    root = tmp_path / "splitted"
    write_images(root / "train" / "a", n=4)
    write_images(root / "test" / "b", n=2)
    return root


def coco_case(change, labels: str | None = None):
    """A COCO caption file (and labels) written here, then spoilt by ``change(files, data)``."""
    def build(tmp_path, folder):
        from data_files import coco_files

        files = coco_files(tmp_path / "coco", labels)
        data = json.loads(files["captions_file"].read_text())
        change(files, data)
        if data is not None:
            files["captions_file"].write_text(json.dumps(data))
        return ["data=coco_captions", *(f"data.{k}={v}" for k, v in files.items())]
    return build


def dangling(files, data):
    data["annotations"][3]["image_id"] = 999


def empty_caption(files, data):
    data["annotations"][0]["caption"] = ""


def uncaptioned(files, data):
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 101]


def repeated_image(files, data):
    data["images"][1]["id"] = data["images"][0]["id"]


def stray_label(files, data):
    files["labels_file"].write_text(files["labels_file"].read_text() + "555,red\n")


def not_coco(files, data):
    data.pop("annotations")


def shards_case(*samples: dict, classes: str | None = None, extra: tuple = ()):
    """Good shards (webdataset's TarWriter) and one more shard of the ``samples`` given, as raw
    members; ``classes`` is written to classes.txt beside them."""
    def build(tmp_path, folder):
        import webdataset
        from data_files import webdataset_shards

        root = tmp_path / "shards"
        webdataset_shards(root, shards=2, per_shard=9)
        if samples:
            with webdataset.TarWriter(str(root / "shard-0002.tar"), encoder=False) as tar:
                for sample in samples:
                    tar.write(sample)
        if classes is not None:
            (root / "classes.txt").write_text(classes)
        return ["data=webdataset", f"data.shards={root}/shard-*.tar", *extra]
    return build


def png_bytes() -> bytes:
    import io

    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(data, "PNG")
    return data.getvalue()


def raw_shard(content: bytes):
    def build(tmp_path, folder):
        args = shards_case()(tmp_path, folder)
        (tmp_path / "shards" / "shard-0002.tar").write_bytes(content)
        return args
    return build


def gzipped_shard(tmp_path, folder):
    import gzip

    args = shards_case()(tmp_path, folder)
    first = tmp_path / "shards" / "shard-0000.tar"
    (tmp_path / "shards" / "shard-0002.tar").write_bytes(gzip.compress(first.read_bytes()))
    return args


RED = {"png": None, "cls": b"red", "txt": b"a red patch"}  # the image is added per case


def raw_members(*members: tuple[str, bytes | None]):
    """Good shards and one more written member by member with tarfile (None: a PNG), for
    layouts webdataset's writer would not produce."""
    def build(tmp_path, folder):
        import io
        import tarfile

        args = shards_case()(tmp_path, folder)
        with tarfile.open(tmp_path / "shards" / "shard-0002.tar", "w") as tar:
            for name, data in members:
                data = png_bytes() if data is None else data
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return args
    return build


def cut_shard(tmp_path, folder):
    args = shards_case()(tmp_path, folder)
    path = tmp_path / "shards" / "shard-0001.tar"
    path.write_bytes(path.read_bytes()[:3700])  # copied in part: inside the second member
    return args


def sample(key: str, **fields) -> dict:
    out = {"__key__": key, **{k: v for k, v in RED.items() if k not in fields}, **fields}
    if "png" in out and out["png"] is None:
        out["png"] = png_bytes()
    return {k: v for k, v in out.items() if v is not False}


# (case, how to build its arguments, the message): docs/bad_input.md lists the same
CATALOGUE = [
    ("folder missing", lambda t, f: ["data=image_folder", "data.root=/no/such/folder"],
     "data.root=/no/such/folder: no such folder"),
    ("folder without class folders", folder_case(no_classes), "no class folders in it"),
    ("empty class folder", folder_case(empty_class), "purple: an empty class folder"),
    ("unreadable image", folder_case(unreadable), "0.png: not an image PIL can read"),
    ("truncated image", folder_case(truncated), "0.png: cannot decode it"),
    ("split folders without train/", folder_case(no_train_split), "has test/ but no train/ folder"),
    ("test/ class not in train/", folder_case(unknown_test_class),
     "class folder 'b' is not one of train/'s classes"),
    ("image_size 0", lambda t, f: ["data=image_folder", f"data.root={f}", "data.image_size=0"],
     "data.image_size=0"),
    ("channels 2", lambda t, f: ["data=image_folder", f"data.root={f}", "data.channels=2"],
     "data.channels=2"),
    ("unknown on_bad_item", lambda t, f: ["data=image_folder", f"data.root={f}",
                                          "data.on_bad_item=ignore"],
     "data.on_bad_item='ignore': choose error or skip"),
    ("split fractions that leave nothing", lambda t, f: ["data=image_folder", f"data.root={f}",
                                                          "data.val_fraction=0.6",
                                                          "data.test_fraction=0.5"],
     "leaves nothing to train on"),
    ("JSONL file missing", lambda t, f: ["data=jsonl", "data.path=/no/such.jsonl"],
     "data.path=/no/such.jsonl: no such file"),
    ("JSONL empty", jsonl_case(""), "no rows in it"),
    ("JSONL line not JSON", jsonl_case(GOOD, '{"image": "imgs/1.jpg", "label": ', GOOD2),
     "bad.jsonl:2: not JSON"),
    ("JSONL line not an object", jsonl_case(GOOD, '["imgs/1.jpg", "b"]'),
     "bad.jsonl:2: expected a JSON object, got list"),
    ("JSONL line without label", jsonl_case(GOOD, '{"image": "imgs/1.jpg"}'),
     "bad.jsonl:2: no 'label' key"),
    ("JSONL line without image", jsonl_case('{"label": "a"}', GOOD2),
     "bad.jsonl:1: no 'image' key"),
    ("JSONL image as URL", jsonl_case(GOOD, '{"image": "https://x.org/1.jpg", "label": "b"}'),
     "bad.jsonl:2: image 'https://x.org/1.jpg' must be a path relative"),
    ("JSONL image file missing", jsonl_case(GOOD, '{"image": "imgs/9.png", "label": "b"}'),
     "bad.jsonl:2:"),
    ("JSONL label not in data.classes", jsonl_case(GOOD, GOOD2, extra=("data.classes=[a,c]",)),
     "bad.jsonl:2: label 'b' is not in data.classes"),
    ("JSONL duplicate id", jsonl_case('{"image": "imgs/0.png", "label": "a", "id": 7}',
                                      '{"image": "imgs/1.jpg", "label": "b", "id": 7}'),
     "bad.jsonl:2: duplicate id 7 (first on line 1)"),
    ("JSONL empty caption", jsonl_case(GOOD, '{"image": "imgs/1.jpg", "label": "b", "caption": " "}'),
     "bad.jsonl:2: 'caption' is empty"),
    ("JSONL caption on some lines only",
     jsonl_case('{"image": "imgs/0.png", "label": "a", "caption": "x"}', GOOD2),
     "bad.jsonl:2: no 'caption', but other lines have one"),
    ("JSONL unknown split", jsonl_case('{"image": "imgs/0.png", "label": "a", "split": "dev"}'),
     "bad.jsonl:1: split 'dev' is not one of train, val, test"),
    ("JSONL split without test rows",
     jsonl_case('{"image": "imgs/0.png", "label": "a", "split": "train"}',
                '{"image": "imgs/1.jpg", "label": "b", "split": "train"}'),
     "no row has split 'test'"),
    ("COCO caption for an image id not in images", coco_case(dangling),
     "annotations[3] (id 1003) refers to image id 999, which is not in 'images'"),
    ("COCO empty caption", coco_case(empty_caption), "annotations[0] (id 1000) has an empty caption"),
    ("COCO image without a caption", coco_case(uncaptioned), "image id 101 has no caption"),
    ("COCO image id repeated", coco_case(repeated_image), "images[1] repeats image id 100"),
    ("COCO file without annotations", coco_case(not_coco), "not a COCO caption file"),
    ("labels for an image not in the captions", coco_case(stray_label, labels="csv"),
     "labels image '555', which is not in the caption file"),
    ("shard pattern naming no file",
     lambda t, f: ["data=webdataset", "data.shards='/no/shards/s-{0000..0003}.tar'"],
     "/no/shards/s-0000.tar: no such file"),
    ("a shard that is not a tar file", raw_shard(b"not a tar file at all" * 40),
     "shard-0002.tar: not a tar file"),
    ("a gzip-compressed shard", gzipped_shard, "shard-0002.tar: a gzip-compressed shard"),
    ("shard sample without an image", shards_case(sample("x1", png=False)),
     "shard-0002.tar: sample 'x1' has no image member"),
    ("shard sample without a label", shards_case(sample("x1", cls=False)),
     "shard-0002.tar: sample 'x1' has no label member"),
    ("shard sample key repeated in another shard", shards_case(sample("000003")),
     "shard-0002.tar: sample key '000003' is also in"),
    ("shard label not in classes.txt", shards_case(classes="blue\ngreen\n"),
     "label 'red' is not one of the 2 classes of"),
    ("undecodable image in a shard", shards_case(sample("x1", png=b"not a png")),
     "shard-0002.tar:x1: not an image PIL can read"),
    ("shard caption on some samples only", shards_case(sample("x1", txt=False)),
     "shard-0002.tar:x1: no caption member, but other samples have one"),
    ("shard sample with two members of one field", raw_members(("x1.png", None), ("x1.cls", b"red"),
                                                              ("x1.png", None)),
     "shard-0002.tar: sample 'x1' has two .png members"),
    ("shard sample whose members are apart",
     raw_members(("x1.png", None), ("x2.png", None), ("x2.cls", b"red"), ("x1.cls", b"red")),
     "shard-0002.tar: the members of sample 'x1' are not together"),
    ("a shard cut short", cut_shard, "shard-0001.tar: not a tar file, or a damaged one (cut short"),
    ("shards per split without test shards",
     lambda t, f: ["data=webdataset", f"data.shards={{train: {f}/x.tar}}"],
     "data.shards has no test shards"),
    ("a dataset column that does not exist",
     lambda t, f: ["data=hf", f"data.dataset={hf_saved(t / 'hf')}", "data.columns.image=picture"],
     "data.columns.image='picture': no such column"),
    ("a folder that is not a saved dataset",
     lambda t, f: ["data=hf", f"data.dataset={f}"], "not a saved dataset"),
    ("captioner on data without captions",
     lambda t, f: ["experiment=captioner_shapes", "data=image_folder", f"data.root={f}"],
     "this data has no caption per item"),
    ("fusion on data without side text",
     lambda t, f: ["experiment=fusion_shapes", "data=image_folder", f"data.root={f}"],
     "this data has no text per item"),
    ("aux_text without descriptions for these classes",
     lambda t, f: ["experiment=aux_text_shapes", "data=image_folder", f"data.root={f}"],
     "descriptions.path is not set and the data config names no shipped bank"),
    # (fusion reads each item's text: on such data it stops at "no text per item", above)
    ("a tokenizer to learn from absent text",
     lambda t, f: ["experiment=aux_text_shapes", "text_encoder=scratch", "descriptions=class_name",
                   "data=image_folder", f"data.root={f}"],
     "text_encoder.tokenizer: no training text to learn a vocabulary from"),
]


@pytest.mark.parametrize("case,build,message", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_stops_before_training_naming_it(make_cfg, tmp_path, folder, case, build,
                                                   message):
    args = build(tmp_path, folder)
    with pytest.raises(UserError) as caught:
        train(make_cfg(*FAST, *args))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert record(tmp_path)["status"] == "failed"
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # it stopped before training


def test_the_catalogue_is_large_and_documented():
    assert len(CATALOGUE) >= 25
    doc = (ROOT / "docs" / "bad_input.md").read_text()
    for case, _, message in CATALOGUE:
        assert f"| {case} |" in doc and message in doc, case


def test_a_bad_file_from_the_command_line_is_one_line_and_exit_2(tmp_path, folder):
    unreadable(tmp_path, folder)
    result = run_inline(["-m", "lmvision.train", "data=image_folder", f"data.root={folder}",
                         *FAST, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("lmvision: error:")]
    assert len(errors) == 1 and "0.png: not an image PIL can read" in errors[0]
    assert record(tmp_path)["status"] == "failed"



@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_from_torchvisions_files(make_cfg, tmp_path, variant):
    from lmvision.data.cifar import CifarDataset

    root = write_cifar(tmp_path / "cifar", variant)
    data = CifarDataset(str(root), variant)
    assert len(data.classes) == (10 if variant == "cifar10" else 100)
    assert data[0]["image"].shape == (3, 32, 32) and data[0]["caption"].startswith("a photo of")
    assert len(data.split_indices["test"]) == (8 if variant == "cifar10" else 80)
    metrics = train(make_cfg(f"data={variant}", f"data.root={root}", "logger=csv", "debug=fdr"))
    assert "test/acc" in metrics


def test_cifar_feeds_the_captioner(make_cfg, tmp_path):
    root = write_cifar(tmp_path / "cifar")
    metrics = train(make_cfg("experiment=captioner_shapes", "data=cifar10", f"data.root={root}",
                             "data.image_size=16", "logger=csv", "debug=fdr"))
    assert "test/bleu4" in metrics


@pytest.mark.parametrize("labels", ["csv", "json"])
def test_coco_captions_with_labels_train_a_classifier_and_a_captioner(make_cfg, tmp_path, labels):
    from data_files import coco_files

    from lmvision.data.coco_captions import CocoCaptionsDataset

    files = coco_files(tmp_path / "coco", labels)
    data = CocoCaptionsDataset(**{k: str(v) for k, v in files.items()}, image_size=16)
    assert data.classes == ["blue", "green", "red"] and len(data) == 18
    item = data[0]
    assert item["caption"] == "a blue patch" and item["references"] == ["a blue patch", "blue noise"]
    args = ["data=coco_captions", *(f"data.{k}={v}" for k, v in files.items()), *FAST]
    assert "test/acc" in train(make_cfg(*args))
    metrics = train(make_cfg("experiment=captioner_shapes", *args, output_dir=tmp_path / "cap"))
    assert "test/cider" in metrics


def test_coco_captions_without_labels_feed_a_captioner(make_cfg, tmp_path):
    from data_files import coco_files

    files = coco_files(tmp_path / "coco", labels=None)
    metrics = train(make_cfg("experiment=captioner_shapes", "data=coco_captions",
                             *(f"data.{k}={v}" for k, v in files.items()), *FAST,
                             "strategy.classifier_weight=0"))
    assert "test/cider" in metrics


@pytest.mark.parametrize("splits", [True, False])
def test_a_saved_hugging_face_dataset(make_cfg, tmp_path, splits):
    from data_files import hf_saved

    from lmvision.data.hf import HFDataset

    path = hf_saved(tmp_path / "hf", splits)
    data = HFDataset(str(path), {"image": "img", "label": "label", "caption": "caption"},
                     image_size=16)
    assert data.classes == ["blue", "green", "red"] and len(data) == 18
    assert data[0]["image"].shape == (3, 16, 16) and data[0]["caption"].endswith("patch")
    assert (data.split_indices is not None) == splits
    args = ["data=hf", f"data.dataset={path}", "data.columns.image=img",
            "data.columns.caption=caption", *FAST]
    assert "test/acc" in train(make_cfg(*args))
    metrics = train(make_cfg("experiment=captioner_shapes", *args, output_dir=tmp_path / "cap"))
    assert "test/cider" in metrics


# The strings each file dataset's fixture carries (overrides_for writes them).
STRINGS = {"image_folder": set(), "cifar10": {"caption"}, "jsonl": {"caption", "text"},
           "coco_captions": {"caption"}, "hf": {"caption"}, "webdataset": {"caption"}}
NEEDS = {"fusion_shapes": "text", "captioner_shapes": "caption", "pixel_lm_shapes": "caption"}
EXTRA = {"aux_text_shapes": ["descriptions=class_name"]}


@pytest.mark.slow  # 30 runs: `make test` (each dataset's own tests stay in the fast part)
@pytest.mark.parametrize("data", sorted(STRINGS))
@pytest.mark.parametrize("experiment", ["baseline_shapes", "fusion_shapes", "aux_text_shapes",
                                        "captioner_shapes", "pixel_lm_shapes"])
def test_every_strategy_on_every_file_dataset(make_cfg, tmp_path, experiment, data):
    """Each strategy trains (debug=fdr) on each dataset read from files, or, where it reads
    strings the data has none of, stops before training saying so in one line."""
    from data_files import overrides_for

    args = [f"experiment={experiment}", f"data={data}", *overrides_for(data, tmp_path), *FAST,
            *EXTRA.get(experiment, [])]
    needed = NEEDS.get(experiment)
    if needed and needed not in STRINGS[data]:
        with pytest.raises(UserError, match=f"this data has no {needed} per item"):
            train(make_cfg(*args))
        assert record(tmp_path)["status"] == "failed"
        return
    metrics = train(make_cfg(*args))
    assert record(tmp_path)["status"] == "completed"
    assert any(key.startswith("test/") for key in metrics)
