"""lmvision-prefetch: what a run would download is found from its overrides, fetched (here:
local or failing without network), written to a manifest; offline runs name the command."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, run_inline
from data_files import hf_saved

from lmvision.errors import UserError


def prefetch(args: list[str], cwd, env=None):
    """lmvision-prefetch with ``args``; in a process of its own where ``env`` names the hub's
    cache (huggingface_hub reads it once, when it is imported), else run here."""
    if env and {"HF_HUB_CACHE", "HF_HOME"} & set(env):
        return run_cli(["-m", "lmvision.prefetch", *args], cwd=cwd, timeout=300, env=env)
    return run_inline(["-m", "lmvision.prefetch", *args], cwd=cwd, env=env)


def test_it_lists_what_a_run_would_download(tmp_path):
    saved = hf_saved(tmp_path / "hf")
    result = prefetch(["experiment=aux_text_shapes", "descriptions=language_model", "text_encoder=hf",
                       "backbone=torchvision", "backbone.weights=DEFAULT", "--list"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "text_encoder.name_or_path=bert-base-uncased (model, to fetch)" in lines
    assert "descriptions.name_or_path=gpt2 (model, to fetch)" in lines
    assert "backbone.weights=mobilenet_v3_small:DEFAULT (torchvision_weights, to fetch)" in lines
    local = prefetch(["data=hf", f"data.dataset={saved}", "data.columns.image=img", "--list"],
                     tmp_path)
    assert f"data.dataset={saved} (dataset, local)" in local.stdout.splitlines()
    nothing = prefetch(["--list"], tmp_path)  # the default run: shipped data and encoder
    assert "downloads nothing" in nothing.stdout


def test_without_network_the_manifest_says_what_failed(tmp_path):
    manifest = tmp_path / "manifest.json"
    result = prefetch(["experiment=fusion_shapes", "text_encoder=hf", "--manifest", str(manifest)],
                      tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    (item,) = json.loads(manifest.read_text())["items"]
    assert (item["option"], item["name"], item["status"]) == (
        "text_encoder.name_or_path", "bert-base-uncased", "failed")
    assert "could not be fetched" in result.stderr


def test_local_models_need_nothing_fetched(tmp_path, tiny_causal_lm):
    manifest = tmp_path / "manifest.json"
    result = prefetch(["experiment=captioner_shapes", f"strategy.net.decoder_name={tiny_causal_lm}",
                       f"inputs.text.tokenizer.name_or_path={tiny_causal_lm}",
                       "--manifest", str(manifest)], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    items = json.loads(manifest.read_text())["items"]
    assert [i["status"] for i in items] == ["local", "local"]
    # the caption decoder and its tokenizer (the text side's), each under its own option
    assert sorted(i["option"] for i in items) == ["inputs.text.tokenizer.name_or_path",
                                                 "strategy.net.decoder_name"]


def test_a_mistake_in_the_overrides_is_one_line(tmp_path):
    result = prefetch(["text_encoder=nope", "--list"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("lmvision: error: text_encoder=nope: no such option")


def test_an_offline_run_missing_a_model_names_the_prefetch_command(make_cfg, monkeypatch):
    from lmvision.train import train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="lmvision-prefetch"):
        train(make_cfg("experiment=fusion_shapes", "text_encoder=hf",
                       "text_encoder.name_or_path=some-org/not-in-the-cache", "debug=fdr",
                       "logger=csv"))


def hub_cache_with(cache, repo: str, folder) -> str:
    """``repo`` in a Hugging Face hub cache laid out as a download leaves it
    (``models--org--name/snapshots/<commit>/``, ``refs/main``), its files copied from
    ``folder``: what lmvision-prefetch leaves on a machine with network."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    return str(base / "snapshots" / commit)


@pytest.mark.slow
def test_an_offline_node_runs_from_the_cache_prefetch_filled(tmp_path, tiny_causal_lm):
    """On a node without network (HF_HUB_OFFLINE=1) a run names a model by its hub id and
    loads it from the cache; lmvision-prefetch finds it there (its fetch call, offline, returns
    the cached snapshot) and records it. No download happens here: the cache is filled by
    copying a model saved here into the hub's own layout."""
    cache = tmp_path / "hub"
    snapshot = hub_cache_with(cache, "lmvision-test/tiny-gpt2", tiny_causal_lm)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf")}
    args = ["experiment=captioner_shapes", "strategy.net.decoder_name=lmvision-test/tiny-gpt2",
            "inputs.text.tokenizer.name_or_path=lmvision-test/tiny-gpt2"]
    manifest = tmp_path / "manifest.json"
    result = prefetch([*args, "--manifest", str(manifest)], tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    items = json.loads(manifest.read_text())["items"]
    assert [(i["name"], i["status"], i["detail"]) for i in items] == \
        [("lmvision-test/tiny-gpt2", "fetched", snapshot)] * 2
    run = tmp_path / "run"
    trained = run_cli(["-m", "lmvision.train", *args, "data.num_images=200", "logger=csv",
                       "debug=fdr", f"hydra.run.dir={run}"], cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    (cache / "models--lmvision-test--tiny-gpt2" / "refs" / "main").unlink()  # not in the cache
    missing = run_cli(["-m", "lmvision.train", *args, "data.num_images=200", "logger=csv",
                       "debug=fdr", f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert "lmvision-prefetch" in missing.stderr.splitlines()[-1]
