"""Shared fixtures: compose configs the way the entry points do, in a temporary run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Nothing in the tests may reach the network or prompt: W&B runs offline and quietly.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# `make test` runs the files in parallel (pytest-xdist, one worker per core): each worker and
# the processes it starts then use one thread, so workers do not fight over the cores.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        # xdist's controller imports the class of each warning a worker reports, in one thread
        # per worker: two workers' first Lightning warnings at the same moment deadlock that
        # import (`_DeadlockError` on lightning_fabric.utilities). Import it here, once.
        import pytorch_lightning  # noqa: F401


# The files that take longest start first: `make test` hands whole files to its workers
# (--dist loadfile) in this order, and a long file started last would leave the other worker
# idle until it ends. Longest first, as measured (`--durations=0`, summed per file).
LONGEST_FIRST = ("test_readme.py", "test_multiprocess.py", "test_experiments.py",
                 "test_train.py", "test_fusion_strategy.py", "test_cluster.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """A cache directory shared by the session, never the user's ~/.cache."""
    monkeypatch.setenv("LMVISION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def compose(overrides: list[str], output_dir: Path, config_name: str = "train"):
    """Compose ``config_name`` with ``overrides`` as ``python -m lmvision.train`` would.

    The Hydra config is registered (so ``${hydra:...}`` resolves) and ``paths.output_dir``
    points at ``output_dir``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import lmvision.config  # noqa: F401  (registers the resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str, config_name: str = "train", output_dir: Path | None = None):
        return compose(list(overrides), output_dir or tmp_path / "run", config_name)

    return _make


def run_cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None):
    """Run ``python -m ...`` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None removes a variable
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_inline(args: list[str], cwd: Path, env: dict | None = None):
    """``run_cli(["-m", <entry point module>, *options])``, run in this process
    (:func:`lmvision.run.inline.run_main`): the interpreter's start and imports are paid once
    per test worker instead of once per command. For single-process commands only: a DDP run
    or a sweep of processes re-runs ``sys.argv`` in new processes. With
    ``LMVISION_TESTS_IN_SUBPROCESS`` set, a process of its own (``run_cli``)."""
    assert args[0] == "-m", args
    if os.environ.get("LMVISION_TESTS_IN_SUBPROCESS"):  # tests/mutations.py --before: other code
        return run_cli(args, cwd, env=env)
    from lmvision.run.inline import run_main

    status, out, err = run_main(args[1], args[2:], cwd, env)
    return subprocess.CompletedProcess([sys.executable, *args], status, out, err)


def run_script_inline(script: Path, args: list[str], cwd: Path, env: dict | None = None):
    """``run_cli([script, *args])``, run in this process as ``__main__``
    (:func:`lmvision.run.inline.run_script`): for scripts whose runs are in-process too (a
    study's ``--smoke``), so nothing is imported twice."""
    from lmvision.run.inline import run_script

    status, out, err = run_script(script, args, cwd, env)
    return subprocess.CompletedProcess([sys.executable, str(script), *args], status, out, err)


def assert_same_final_weights(first: Path, second: Path) -> dict:
    """Two checkpoints stop at the same epoch and step with the same weights (atol 1e-6);
    returns the first, loaded."""
    import torch

    a = torch.load(first, weights_only=False)
    b = torch.load(second, weights_only=False)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    return a


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    """A tiny GPT-2 and a word-level tokenizer, built and saved here, loaded back through the
    same from_pretrained code a hub name takes."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ("a an the round red square shape with corners bright colour of like small large "
             "circle disc edge side top bottom four three flat curved sharp green blue").split()
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "\n", "-", ":", "?", "Q", "A"] + words)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=32,
                                       n_layer=2, n_head=2, eos_token_id=1, bos_token_id=1))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def slurm():
    """The one-node SLURM cluster of tests/cluster/slurm.sh, started (as root; it installs
    Debian's packages if missing) unless it is up already. Its config is its own file
    (``SLURM_CONF``), so a machine's real cluster is never used. Tests that need it are skipped,
    with the reason, where it cannot start."""
    import shutil

    state = Path(os.environ.get("LMVISION_SLURM_DIR", "/tmp/lmvision-slurm"))
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")

    def up() -> bool:
        if shutil.which("sinfo") is None or not (state / "slurm.conf").is_file():
            return False
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        return nodes.returncode == 0 and any(s in nodes.stdout for s in ("idle", "mixed"))

    if not up():
        if os.geteuid() != 0:
            pytest.skip("SLURM is not running and starting it needs root "
                        "(tests/cluster/slurm.sh start)")
        started = subprocess.run(["bash", str(ROOT / "tests" / "cluster" / "slurm.sh"), "start"],
                                 capture_output=True, text=True, timeout=900)
        if started.returncode != 0 or not up():
            reason = (started.stderr.strip() or started.stdout.strip() or "its nodes are busy")
            pytest.skip(f"SLURM could not start here: {reason.splitlines()[-1]}")
    return state / "slurm.conf"
