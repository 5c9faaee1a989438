"""`webdataset`: tar shards written by webdataset's own TarWriter, indexed and read by offset,
shared between DDP processes and loader workers (each reads its own shards)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import ROOT, run_cli
from data_files import webdataset_shards
from torch.utils.data import DataLoader, Dataset, get_worker_info

from lmvision.data.shard_sampler import ShardBatches
from lmvision.data.tar_shards import expand, read_index
from lmvision.data.webdataset import WebDatasetShards
from lmvision.train import train

FAST = ["logger=csv", "debug=fdr", "data.image_size=16", "data.num_workers=0"]


def test_brace_patterns_expand_as_webdataset_writes_them():
    assert expand("a-{0000..0002}.tar") == ["a-0000.tar", "a-0001.tar", "a-0002.tar"]
    assert expand("{x,y}/s-{8..10}.tar") == ["x/s-8.tar", "x/s-9.tar", "x/s-10.tar",
                                             "y/s-8.tar", "y/s-9.tar", "y/s-10.tar"]
    assert expand("plain.tar") == ["plain.tar"]


@pytest.mark.parametrize("fmt", ["USTAR_FORMAT", "GNU_FORMAT", "PAX_FORMAT"])
def test_tar_headers_are_read_as_pythons_tarfile_reads_them(tmp_path, fmt):
    """Long names (GNU long-name members, PAX paths, the ustar prefix), non-ASCII names,
    empty members, folders and links: the same regular files, offsets and sizes as tarfile."""
    import io
    import tarfile

    from lmvision.data.tar_shards import TarFormatError, tar_members

    path = tmp_path / "mixed.tar"
    names = ["a/0001.png", "b" * 60 + "/" + "c" * 70 + ".jpg", "empty.txt"]
    if fmt != "USTAR_FORMAT":  # a long file name, non-ASCII names
        names += ["x" * 120 + ".cls", "dé/ünï.txt"]
    with tarfile.open(path, "w", format=getattr(tarfile, fmt)) as tar:
        folder = tarfile.TarInfo("a")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for i, name in enumerate(names):
            data = bytes(range(256)) * i
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "0001.png"
        tar.addfile(link)
    with tarfile.open(path) as tar:
        expected = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
    with open(path, "rb") as f:
        assert list(tar_members(f)) == expected
    assert [e[0] for e in expected] == names
    spoilt = tmp_path / "noise.tar"
    spoilt.write_bytes(bytes(range(256)) * 8)
    with open(spoilt, "rb") as f, pytest.raises(TarFormatError):
        list(tar_members(f))


def tar_bytes(*members: tuple[str, bytes], fmt=None, pax: dict | None = None) -> bytes:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt or tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if pax:
                info.pax_headers = dict(pax)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def members_of(data: bytes, tmp_path) -> list:
    from lmvision.data.tar_shards import tar_members

    path = tmp_path / "t.tar"
    path.write_bytes(data)
    with open(path, "rb") as f:
        return list(tar_members(f))


def test_tar_headers_long_links_pax_sizes_and_base_256_sizes(tmp_path):
    import tarfile

    from lmvision.data.tar_shards import TarFormatError

    # a GNU long link name ('K' header) before a member, and a PAX size record
    link = tarfile.TarInfo("k/l.png")
    link.type, link.linkname = tarfile.SYMTYPE, "z" * 150
    data = tar_bytes(("k/1.png", b"abc"), fmt=tarfile.GNU_FORMAT)
    import io

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(link)
        info = tarfile.TarInfo("k/2.png")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    assert members_of(out.getvalue(), tmp_path) == [("k/2.png", 2048, 5)]
    assert members_of(tar_bytes(("p.png", b"12345"), pax={"size": "5"}), tmp_path)[0][2] == 5
    # a base-256 size field, as GNU tar writes sizes of 8 GiB and more
    header = bytearray(data[:512])
    header[124:136] = b"\x80" + (3).to_bytes(11, "big")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    assert members_of(bytes(header) + data[512:], tmp_path) == [("k/1.png", 512, 3)]
    for spoilt, what in [(data[:514], "cut short inside member"),  # a shard copied in part
                         (data[:300], "cut short inside the header"),
                         (bytes(1024), "an empty file")]:
        with pytest.raises(TarFormatError, match=what):
            members_of(spoilt, tmp_path)
    hard = io.BytesIO()
    with tarfile.open(fileobj=hard, mode="w") as tar:
        info = tarfile.TarInfo("h.png")
        info.type, info.linkname = tarfile.LNKTYPE, "k/1.png"
        tar.addfile(info)
    with pytest.raises(TarFormatError, match="hard link"):
        members_of(hard.getvalue(), tmp_path)
    bad_pax = bytearray(tar_bytes(("p.png", b"x"), pax={"comment": "hi"}))
    at = bad_pax.index(b"comment") - 3  # the record's length: "NN comment=hi\n"
    bad_pax[at:at + 2] = b"00"
    with pytest.raises(TarFormatError):  # a zero length would loop for ever
        members_of(bytes(bad_pax), tmp_path)


def test_the_index_reads_what_webdataset_itself_reads(tmp_path):
    """Every sample's image bytes, read by offset, equal those webdataset's own reader gives;
    labels are class names, captions come from .txt."""
    import webdataset

    pattern = webdataset_shards(tmp_path / "shards", shards=3, per_shard=5)
    data = WebDatasetShards(pattern, image_size=16)
    assert len(data) == 15 and data.classes == ["blue", "green", "red"]
    assert data.shard_of.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    reference = {s["__key__"]: s for s in webdataset.WebDataset(pattern, shardshuffle=False)}
    assert len(reference) == 15
    for i, member in enumerate(data.paths):
        sample = reference[member.key]
        image = sample.get("png", sample.get("jpg"))
        assert data.image_file(member).getvalue() == image
        assert data.classes[int(data.labels[i])] == sample["cls"].decode()
        assert data.captions[i] == sample["txt"].decode()
    item = data[3]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.uint8
    assert item["caption"] == f"a {data.classes[int(item['label'])]} patch"


def test_classes_txt_names_numbered_labels(tmp_path):
    import webdataset

    root = tmp_path / "numbered"
    root.mkdir()
    png = (tmp_path / "x.png")
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 20, 30)).save(png)
    with webdataset.TarWriter(str(root / "s-0.tar"), encoder=False) as tar:
        for i in range(4):
            tar.write({"__key__": f"k{i}", "png": png.read_bytes(), "cls": str(i % 2).encode()})
    (root / "classes.txt").write_text("cat\ndog\n")
    index = read_index(str(root / "s-0.tar"))
    assert index.classes == ["cat", "dog"] and index.label_index == [0, 1, 0, 1]
    assert index.captions is None and index.texts is None
    (root / "classes.txt").unlink()
    assert read_index(str(root / "s-0.tar")).classes == ["0", "1"]


def shard_of(sizes: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), s) for s, n in enumerate(sizes)])


@pytest.mark.parametrize("world,workers", [(1, 0), (1, 2), (2, 0), (2, 2), (3, 2)])
def test_training_batches_give_each_item_once_per_epoch_across_processes(world, workers):
    shards = shard_of([7, 9, 8, 8, 5, 9])  # 46 items, 6 shards of unequal sizes
    n = len(shards)
    pad = (-n) % world
    orders = []
    for epoch in range(3):
        per_rank = []
        for rank in range(world):
            batches = ShardBatches(shards, batch_size=4, workers=workers, rank=rank, world=world,
                                   train=True, seed=1, window=6)
            batches.set_epoch(epoch)
            got = list(batches)
            assert len(got) == len(batches)  # Lightning counts the steps with len()
            assert all(e == epoch for batch in got for _, e in batch)
            per_rank.append([i for batch in got for i, _ in batch])
        assert len({len(b) for b in per_rank}) == 1  # every process takes the same steps
        counts = Counter(i for items in per_rank for i in items)
        assert set(counts) == set(range(n))
        assert sum(counts.values()) - n == pad  # only the padding is seen twice
        orders.append(per_rank[0])
        # each process reads a contiguous run of the epoch's shard order: processes share at
        # most the shards where their runs meet (and the padding wraps to the first one)
        touched = [set(shards[items].tolist()) for items in per_rank]
        assert sum(len(t) for t in touched) <= 6 + world - 1 + (pad > 0)
    assert orders[0] != orders[1] != orders[2]  # a new order each epoch


def test_evaluation_batches_give_each_item_exactly_once():
    shards = shard_of([5, 6, 7])
    seen = []
    for rank in range(2):
        batches = ShardBatches(shards, batch_size=4, workers=2, rank=rank, world=2)
        got = list(batches)
        assert len(got) == len(batches)
        seen += [i for batch in got for i in batch]
    assert sorted(seen) == list(range(18))


def test_large_seeds_are_within_torchs_range():
    batches = ShardBatches(shard_of([10, 10]), 4, workers=2, rank=1, world=2, train=True,
                           seed=2**32 - 1)
    batches.set_epoch(7)
    assert len(list(batches)) == len(batches)


def test_a_resumed_epoch_skips_the_batches_already_trained():
    shards = shard_of([10, 10, 10])
    full = ShardBatches(shards, 4, workers=2, train=True, seed=3)
    full.set_epoch(1)
    resumed = ShardBatches(shards, 4, workers=2, train=True, seed=3, skip=(1, 3))
    resumed.set_epoch(1)
    assert list(resumed) == list(full)[3:]
    assert list(resumed) == list(full)  # once only: the next pass is whole


class WhoReads(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index):
        return index, get_worker_info().id


def test_each_loader_worker_reads_its_own_shards():
    """The DataLoader hands batch k to worker k mod workers, the order ShardBatches plans for:
    each worker gets only the items of its own run of shards, epoch after epoch."""
    shards = shard_of([8] * 8)
    batches = ShardBatches(shards, batch_size=3, workers=2, rank=1, world=2, train=True, seed=0)
    loader = DataLoader(WhoReads(), batch_sampler=batches, num_workers=2,
                        persistent_workers=True, collate_fn=list)
    for epoch in range(2):
        batches.set_epoch(epoch)
        planned = [{i for b in part for i in b.tolist()} for part in batches.worker_batches()]
        read = {0: set(), 1: set()}
        for batch in loader:
            for (i, _), worker in batch:
                read[worker].add(i)
        assert [read[0], read[1]] == planned
        shards_read = [set(shards[sorted(r)].tolist()) for r in read.values()]
        assert len(shards_read[0] & shards_read[1]) <= 1  # at most the shard they meet in


def test_webdataset_trains_a_classifier(make_cfg, tmp_path):
    pattern = webdataset_shards(tmp_path / "shards")
    metrics = train(make_cfg("data=webdataset", f"data.shards='{pattern}'", *FAST))
    assert "test/acc" in metrics
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["data_fingerprint"] == WebDatasetShards(pattern, image_size=16).fingerprint


def test_webdataset_captions_feed_a_captioner(make_cfg, tmp_path):
    pattern = webdataset_shards(tmp_path / "shards")
    metrics = train(make_cfg("experiment=captioner_shapes", "data=webdataset",
                             f"data.shards='{pattern}'", *FAST))
    assert "test/bleu4" in metrics


def test_shards_per_split_and_skipped_images(make_cfg, tmp_path):
    import webdataset

    train_pattern = webdataset_shards(tmp_path / "train", shards=2, per_shard=9)
    test_pattern = webdataset_shards(tmp_path / "test", shards=1, per_shard=6, first=100)
    with webdataset.TarWriter(str(tmp_path / "test" / "broken.tar"), encoder=False) as tar:
        tar.write({"__key__": "bad", "png": b"not a png", "cls": b"red", "txt": b"a red patch"})
    shards = f"{{train: '{train_pattern}', test: ['{test_pattern}', {tmp_path}/test/broken.tar]}}"
    train(make_cfg("data=webdataset", f"data.shards={shards}", "data.on_bad_item=skip", *FAST))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["class_split"]["items"] == {"train": 16, "val": 2, "test": 6}
    skipped = json.loads((tmp_path / "run" / "skipped_items.json").read_text())
    assert [s["file"] for s in skipped] == [f"{tmp_path}/test/broken.tar:bad"]


@pytest.mark.slow
def test_webdataset_under_ddp_each_sample_once_per_epoch(tmp_path):
    """Two processes (gloo), two loader workers each: in every epoch the training items seen
    by the two processes are the training split, each exactly once."""
    train_pattern = webdataset_shards(tmp_path / "train", shards=4, per_shard=10)
    test_pattern = webdataset_shards(tmp_path / "test", shards=1, per_shard=10, first=100)
    run_dir = tmp_path / "run"
    result = run_cli(["-m", "lmvision.train", "trainer=ddp_cpu", "data=webdataset",
                      f"data.shards={{train: '{train_pattern}', test: '{test_pattern}'}}",
                      "data.image_size=16", "data.batch_size=4", "data.num_workers=2",
                      "trainer.max_epochs=2", "logger=csv", "backbone=small_cnn",
                      "+callbacks.seen._target_=seen_items.RecordSeen",
                      f"+callbacks.seen.path={run_dir / 'seen'}", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path, env={"PYTHONPATH": str(ROOT / "tests")})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["device"]["world_size"] == 2
    assert record["class_split"]["items"]["train"] == 36  # 40 train items, 4 drawn for val
    data = WebDatasetShards({"train": train_pattern, "test": test_pattern}, image_size=16)
    from lmvision.data.class_splits import own_split

    split = own_split(data.split_indices, 0.1, 0)["train"].tolist()
    seen = [json.loads((run_dir / "seen" / f"seen-rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        assert len(seen[0][epoch]) == len(seen[1][epoch]) == 18
        assert sorted(seen[0][epoch] + seen[1][epoch]) == split
    assert seen[0]["0"] != seen[0]["1"]  # each epoch reshuffles the shards


@pytest.mark.slow
def test_a_bad_image_found_while_training_is_one_line_naming_it(tmp_path):
    """With data.verify=false a bad image is found where a loader worker reads it: the run
    stops with one line naming the shard and the sample, exit status 2, its record failed."""
    import webdataset

    webdataset_shards(tmp_path / "shards", shards=2, per_shard=9)
    with webdataset.TarWriter(str(tmp_path / "shards" / "shard-0002.tar"), encoder=False) as tar:
        for i in range(9):
            tar.write({"__key__": f"bad{i}", "png": b"not a png", "cls": b"red",
                       "txt": b"a red patch"})
    run = tmp_path / "run"
    result = run_cli(["-m", "lmvision.train", "data=webdataset",
                      f"data.shards={tmp_path}/shards/shard-*.tar", "data.verify=false",
                      "data.num_workers=2", "data.image_size=16", "logger=csv", "debug=limit",
                      f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("lmvision: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "shard-0002.tar:bad" in errors[0] and "not an image PIL can read" in errors[0]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and "shard-0002.tar:bad" in record["error"]
    assert "\n" not in record["error"]
