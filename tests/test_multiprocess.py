"""Sweeps and DDP: several jobs, several processes (marked slow). The README's own DDP run
(its test metrics equal one process's), sweep (six jobs) and sweep of DDP jobs are checked as
its lines, in tests/test_readme.py."""

from __future__ import annotations

import json

import pytest
from conftest import compose, run_cli, run_inline

pytestmark = pytest.mark.slow

TINY = ["data.num_images=400", "logger=csv", "debug=limit"]


def read(path):
    return json.loads(path.read_text())


def test_a_sweep_after_another_config_in_the_same_process_names_its_own_directory(tmp_path):
    """A sweep started in a process where another config was composed before (as the tests
    and notebooks do; Hydra keeps it for ``${hydra:...}``): its jobs and summary are in its own
    multirun/<name>/, not in the directory the earlier config names."""
    compose(["experiment=fusion_shapes"], tmp_path / "composed")
    result = run_inline(["-m", "lmvision.train", "-m", "seed=0", "debug=fdr", "logger=csv"],
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun" / "image_classifier").glob("*/*")
    assert f"Sweep {sweep.relative_to(tmp_path)}: 1 of 1 jobs completed" in result.stdout


def test_a_failing_job_does_not_end_the_sweep(tmp_path):
    """The middle job's options leave nothing to train on: the third job still runs, and the
    sweep ends with a summary naming the failure and a non-zero exit status."""
    sweep = tmp_path / "sweep"
    result = run_inline(["-m", "lmvision.train", "-m", "data.val_fraction=0.1,0.95,0.2", *TINY,
                         f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert [read(sweep / str(i) / "run.json")["status"] for i in range(3)] == \
        ["completed", "failed", "completed"]
    summary = result.stdout[result.stdout.index(f"Sweep {sweep}:"):].splitlines()
    assert summary[0] == f"Sweep {sweep}: 2 of 3 jobs completed, 1 failed"
    assert "job 1: failed" in summary[2] and "leaves nothing to train on" in summary[2]
    assert "data.val_fraction=0.2" in summary[3] and "val/acc_best=" in summary[3]
    assert "lmvision: error: data.val_fraction + data.test_fraction" in result.stderr
    # the same command again would write over those runs: refused before any job starts
    again = run_inline(["-m", "lmvision.train", "-m", "data.val_fraction=0.1,0.95,0.2", *TINY,
                        f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert again.returncode == 2 and "already holds the runs of a sweep" in again.stderr
    assert [read(sweep / str(i) / "run.json")["status"] for i in range(3)] == \
        ["completed", "failed", "completed"]


def test_fusion_under_ddp_with_the_default_wandb_logger(tmp_path):
    """What the README says works: `make train ARGS="trainer=ddp_cpu experiment=fusion_shapes
    debug=limit"`: every parameter is used in every step (or DDP would stop), W&B (offline)
    runs on rank 0 only, and the run record is completed."""
    run_dir = tmp_path / "fusion-ddp"
    result = run_cli(["-m", "lmvision.train", "trainer=ddp_cpu", "experiment=fusion_shapes",
                      "debug=limit", "strategy.net.modality_dropout=0.3", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path, timeout=600,
                     env={"WANDB_MODE": None, "WANDB_API_KEY": None, "NETRC": str(tmp_path / "none")})
    assert result.returncode == 0, result.stderr[-3000:]
    record = read(run_dir / "run.json")
    assert record["status"] == "completed" and record["device"]["world_size"] == 2
    assert record["wandb"]["mode"] == "offline"
    assert {"test/acc", "test/acc_no_text"} <= set(read(run_dir / "metrics.json"))
    assert result.stdout.count("Run directory:") == 1


def test_aux_text_under_ddp(tmp_path):
    """aux_text with held-out classes under DDP (2 CPU processes): every trained parameter is
    used in every step, the frozen descriptions are encoded on each process, and the zero-shot
    test metrics come from every test item once."""
    run_dir = tmp_path / "aux-ddp"
    result = run_cli(["-m", "lmvision.train", "trainer=ddp_cpu", "experiment=aux_text_shapes",
                      "debug=limit", "trainer.limit_test_batches=1.0", "logger=csv",
                      f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = read(run_dir / "run.json")
    assert record["status"] == "completed" and record["device"]["world_size"] == 2
    assert record["descriptions"]["source"] == "file"
    metrics = read(run_dir / "metrics.json")
    assert (run_dir / "figures" / "test_explanations.json").is_file()
    # the same checkpoint tested by one process gives the same metrics (each item once)
    single = metrics_of_one_process(record["tested_checkpoint"], tmp_path)
    for key in ("test/acc", "test/acc_seen", "test/acc_unseen", "test/acc_hm", "test/acc_unseen_zsl"):
        assert metrics[key] == pytest.approx(single[key], abs=1e-6), key


def test_pixel_lm_under_ddp_in_a_sweep_where_another_ddp_job_fails(tmp_path):
    """pixel_lm (class- and caption-conditioned) under DDP: every parameter is used in every
    step, the palette is fitted identically on each process, the sample grids are drawn once.
    It is the second job of a sweep whose first job fails on both of its processes after they
    started (its network does not fit the data): Lightning's watcher of that job's second
    process must not take the sweep down with it."""
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "lmvision.train", "-m", "experiment=pixel_lm_shapes",
                      "strategy.net.image_size=8,16", "trainer=ddp_cpu", "debug=limit",
                      "data.num_images=400", "evaluation.samples.images=4", "logger=csv",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"Sweep {sweep}: 1 of 2 jobs completed, 1 failed" in result.stdout
    assert [read(sweep / j / "run.json")["status"] for j in ("0", "1")] == ["failed", "completed"]
    assert "strategy.net.image_size must equal data.image_size" in result.stderr
    run_dir = sweep / "1"
    record = read(run_dir / "run.json")
    assert record["device"]["world_size"] == 2
    metrics = read(run_dir / "metrics.json")
    assert {"test/bits_per_dim", "probe/acc_best", "val/bits_per_dim_best"} <= set(metrics)
    assert len(list((run_dir / "figures").glob("samples_*.png"))) == 4


def test_captioner_under_ddp(tmp_path):
    """The multi-task captioner under DDP (2 CPU processes): every parameter is used in every
    step, captions of every test item are gathered from both processes for the caption scores,
    and the faithfulness sums are reduced across them."""
    run_dir = tmp_path / "captioner-ddp"
    result = run_cli(["-m", "lmvision.train", "trainer=ddp_cpu", "experiment=captioner_shapes",
                      "debug=limit", "data.num_images=300", "data.image_size=16",
                      "trainer.limit_test_batches=1.0", "data.batch_size=32", "logger=csv",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = read(run_dir / "run.json")
    assert record["status"] == "completed" and record["device"]["world_size"] == 2
    metrics = read(run_dir / "metrics.json")
    assert {"test/bleu4", "test/cider", "explain/mention_rate", "explain/pointing"} <= set(metrics)
    # the same checkpoint tested by one process gives the same scores (each item once)
    single = metrics_of_one_process(record["tested_checkpoint"], tmp_path)
    for key in ("test/bleu4", "test/cider", "test/acc", "explain/mention_rate"):
        assert metrics[key] == pytest.approx(single[key], abs=1e-5), key


def metrics_of_one_process(checkpoint: str, tmp_path) -> dict:
    """The metrics of ``lmvision-eval`` on ``checkpoint`` with one process, every test item."""
    out = tmp_path / "eval"
    done = run_inline(["-m", "lmvision.evaluate", f"ckpt_path={checkpoint}", "trainer=cpu",
                       "debug=limit", "trainer.limit_test_batches=1.0", f"hydra.run.dir={out}"],
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return read(out / "metrics.json")
