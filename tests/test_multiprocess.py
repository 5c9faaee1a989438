"""Sweeps and DDP: several jobs, several processes (marked slow)."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

TINY = ["data.num_images=400", "logger=csv", "debug=limit"]


def test_sweep_runs_six_jobs_each_with_its_own_record(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "lmvision.train", "-m", "seed=0,1,2", "backbone=small_cnn,resnet18",
                      *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3", "4", "5"]
    seen = set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        record = json.loads((job / "run.json").read_text())
        assert record["status"] == "completed" and "test/acc" in metrics
        assert (job / "checkpoints" / "last.ckpt").is_file()
        seen.add((record["seed"], record["choices"]["backbone"]))
    assert seen == {(s, b) for s in (0, 1, 2) for b in ("small_cnn", "resnet18")}
    check_compare_notebook(sweep)


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
    assert "image_classifier | shapes | small_cnn | 3 |" in text
    assert "image_classifier | shapes | resnet18 | 3 |" in text


def test_ddp_on_cpu_trains_with_two_processes_and_one_run_record(tmp_path):
    run_dir = tmp_path / "ddp"
    result = run_cli(["-m", "lmvision.train", "trainer=ddp_cpu", "data.num_images=600",
                      "trainer.max_epochs=2", "logger=csv", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["device"]["world_size"] == 2 and record["device"]["strategy"] == "DDPStrategy"
    assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())
    # Only rank 0 prints the summary and writes the record; rank 1 ran (its Hydra log exists).
    assert result.stdout.count("Run directory:") == 1
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in run_dir.glob("*.json")) == ["metrics.json", "run.json"]
