"""Sweeps and DDP: several jobs, several processes (marked slow)."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, run_cli, run_inline

pytestmark = pytest.mark.slow

TINY = ["data.num_images=400", "logger=csv", "debug=limit"]


def read(path):
    return json.loads(path.read_text())


def test_sweep_runs_six_jobs_each_with_its_own_record(tmp_path):
    result = run_inline(["-m", "lmvision.train", "-m", "seed=0,1,2",
                         "backbone=small_cnn,resnet18", *TINY], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # the default sweep directory: multirun/<name>/<date>/<time>
    (sweep,) = (tmp_path / "multirun" / "image_classifier").glob("*/*")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3", "4", "5"]
    seen = set()
    for job in jobs:
        metrics = read(job / "metrics.json")
        record = read(job / "run.json")
        assert record["status"] == "completed" and "test/acc" in metrics
        assert (job / "checkpoints" / "last.ckpt").is_file()
        seen.add((record["seed"], record["choices"]["backbone"]))
    assert seen == {(s, b) for s in (0, 1, 2) for b in ("small_cnn", "resnet18")}
    assert f"Sweep {sweep.relative_to(tmp_path)}: 6 of 6 jobs completed" in result.stdout
    check_compare_notebook(sweep)
    # lmvision-compare on the sweep: two groups of three seeds, one tested against the other
    compared = run_inline(["-m", "lmvision.compare", str(sweep), "--format", "json",
                           "--baseline", "backbone=small_cnn"], cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-2000:]
    groups = {g["group"]: g for g in json.loads(compared.stdout)}
    assert sorted(g["n"] for g in groups.values()) == [3, 3]
    other = groups["backbone=resnet18 data.num_images=400 debug=limit"]
    assert other["test/acc"]["pairs"] == 3 and 0.0 <= other["test/acc"]["p"] <= 1.0


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


def check_compare_notebook(runs_dir):
    """notebooks/compare_runs.ipynb runs on a real sweep and reports both backbones."""
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "compare_runs.ipynb", as_version=4)
    os.environ["LMVISION_RUNS_DIR"] = str(runs_dir)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    finally:
        del os.environ["LMVISION_RUNS_DIR"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "6 completed runs" in text
    for backbone in ("small_cnn", "resnet18"):  # logger=csv does not make a group
        assert f"| backbone={backbone} data.num_images=400 debug=limit | 3 |" in text
    assert "bar_test_acc.png" in text and "curves_val_acc.png" in text


def test_ddp_test_metrics_equal_one_process(tmp_path):
    """Train under DDP (2 CPU processes, gloo), then test the checkpoint with 2 processes and
    with 1: every test item is evaluated exactly once, so the metrics agree. The test split
    (61 items) does not divide by the processes (shares of 31 and 30), and the evaluation
    batches (8) are smaller than a share, so a sampler that padded a share, or a mean taken per
    batch or per process rather than per item, would show."""
    run_dir = tmp_path / "ddp"
    result = run_cli(["-m", "lmvision.train", "trainer=ddp_cpu", "data.num_images=305",
                      "trainer.max_epochs=1", "logger=csv", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = read(run_dir / "run.json")
    assert record["status"] == "completed"
    assert record["device"]["world_size"] == 2 and record["device"]["strategy"] == "DDPStrategy"
    # Only rank 0 prints the summary and writes the record; rank 1 ran (its Hydra log exists).
    assert result.stdout.count("Run directory:") == 1
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in run_dir.glob("*.json")) == ["metrics.json", "run.json"]

    metrics = {}
    for trainer in ("ddp_cpu", "cpu"):
        out = tmp_path / f"eval-{trainer}"
        run = run_cli if trainer == "ddp_cpu" else run_inline  # DDP starts its own processes
        done = run(["-m", "lmvision.evaluate", f"ckpt_path={record['checkpoints']['best']}",
                    f"trainer={trainer}", "+data.datamodule.eval_batch_size=8",
                    f"hydra.run.dir={out}"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics[trainer] = read(out / "metrics.json")
        assert read(out / "run.json")["class_split"]["items"]["test"] == 61
    assert metrics["ddp_cpu"].keys() == metrics["cpu"].keys()
    for key, value in metrics["cpu"].items():
        assert metrics["ddp_cpu"][key] == pytest.approx(value, abs=1e-6), key


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


def test_pixel_lm_under_ddp(tmp_path):
    """pixel_lm (class- and caption-conditioned) under DDP: every parameter is used in every
    step, the palette is fitted identically on each process, the sample grids are drawn once."""
    run_dir = tmp_path / "pixel-ddp"
    result = run_cli(["-m", "lmvision.train", "trainer=ddp_cpu", "experiment=pixel_lm_shapes",
                      "debug=limit", "data.num_images=400", "evaluation.samples.images=4", "logger=csv",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = read(run_dir / "run.json")
    assert record["status"] == "completed" and record["device"]["world_size"] == 2
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


def test_ddp_under_multirun_each_job_runs_its_own_processes(tmp_path):
    """A `-m` sweep whose jobs each use trainer=ddp_cpu: every job starts its own second
    process in its own directory (not the sweep again), and the next job starts afresh."""
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "lmvision.train", "-m", "seed=0,1", "trainer=ddp_cpu", *TINY,
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Sweep {sweep}: 2 of 2 jobs completed" in result.stdout
    for job, seed in (("0", 0), ("1", 1)):
        record = read(sweep / job / "run.json")
        assert record["status"] == "completed" and record["seed"] == seed
        assert record["device"]["world_size"] == 2
        assert (sweep / job / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    compared = run_inline(["-m", "lmvision.compare", str(sweep), "--format", "json"],
                          cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-2000:]
    (group,) = json.loads(compared.stdout)
    assert group["n"] == 2 and group["seeds"] == [0, 1]


def test_a_failing_ddp_job_does_not_end_the_sweep(tmp_path):
    """Job 0 fails on both of its processes after they started (its network does not fit the
    data); Lightning's watcher of the second process must not take the sweep down with it."""
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "lmvision.train", "-m", "experiment=pixel_lm_digits",
                      "strategy.net.image_size=16,8", "data.image_size=8", "trainer=ddp_cpu",
                      "evaluation.probe=null", "evaluation.samples.images=0", "logger=csv", "debug=limit",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"Sweep {sweep}: 1 of 2 jobs completed, 1 failed" in result.stdout
    assert [read(sweep / j / "run.json")["status"] for j in ("0", "1")] == ["failed", "completed"]
    assert "strategy.net.image_size must equal data.image_size" in result.stderr
