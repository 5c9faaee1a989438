"""End-to-end runs: experiments under fast_dev_run, the default command, the run record,
reproducibility, resume, evaluation of a checkpoint, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import CONF, ROOT, run_cli
from lmvision.evaluate import evaluate
from lmvision.runs import collect_runs
from lmvision.train import train

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TINY = ["data.num_images=300", "logger=csv"]  # a tiny but real dataset, no W&B files


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_with_fast_dev_run(make_cfg, tmp_path, experiment):
    cfg = make_cfg(f"experiment={experiment}", "debug=fdr")
    metrics = train(cfg)
    assert "test/acc" in metrics and 0.0 <= metrics["test/acc"] <= 1.0
    record = read(tmp_path / "run" / "run.json")
    assert record["status"] == "completed" and record["choices"]["experiment"] == experiment
    assert read(tmp_path / "run" / "metrics.json") == metrics


def test_run_record_contents(make_cfg, tmp_path):
    out = tmp_path / "run"
    metrics = train(make_cfg(*TINY, "debug=limit", "seed=3"))
    assert {"test/acc", "test/f1_macro", "test/precision_macro", "test/recall_macro",
            "val/acc_best"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    record = read(out / "run.json")
    assert record["status"] == "completed" and record["seed"] == 3
    assert {"commit", "dirty"} == set(record["git"])
    assert record["packages"]["torch"] == torch.__version__.split("+")[0] or record["packages"]["torch"]
    assert len(record["data_fingerprint"]) == 16
    assert record["device"]["accelerator"] == "CPUAccelerator"
    assert record["wall_time_s"] > 0 and record["fit_seconds"] > 0
    assert Path(record["checkpoints"]["last"]).name == "last.ckpt"
    assert Path(record["checkpoints"]["best"]).is_file()
    assert (out / ".hydra").exists() is False  # compose API: Hydra writes .hydra only from the CLI
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["test_confusion_matrix.png", "test_predictions.png"]
    (row,) = collect_runs(tmp_path)
    assert row["seed"] == 3 and row["backbone"] == "small_cnn" and row["test/acc"] == metrics["test/acc"]


def test_multilabel_tagging_uses_bce_and_reports_exact_match(make_cfg):
    metrics = train(make_cfg(*TINY, "debug=limit", "experiment=tagging_shapes"))
    assert "test/exact_match" in metrics and "test/f1_macro" in metrics


def test_same_seed_same_metrics_bit_for_bit(make_cfg, tmp_path):
    runs = []
    for i in range(2):
        cfg = make_cfg(*TINY, "debug=limit", "seed=7", output_dir=tmp_path / f"r{i}")
        train(cfg)
        runs.append((tmp_path / f"r{i}" / "metrics.json").read_text())
    assert runs[0] == runs[1]
    other = make_cfg(*TINY, "debug=limit", "seed=8", output_dir=tmp_path / "r2")
    train(other)
    assert (tmp_path / "r2" / "metrics.json").read_text() != runs[0]


def test_resume_from_checkpoint_continues_training(make_cfg, tmp_path):
    first = make_cfg(*TINY, "debug=limit", output_dir=tmp_path / "a")
    train(first)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    resumed = make_cfg(*TINY, "debug=limit", "trainer.max_epochs=2", f"ckpt_path={last}",
                       output_dir=tmp_path / "b")
    train(resumed)
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1


def test_eval_tests_a_checkpoint_with_its_training_config(make_cfg, tmp_path):
    trained = train(make_cfg("logger=csv", "debug=limit", "trainer.limit_test_batches=1.0",
                             "data=digits", "data.image_size=8",
                             output_dir=tmp_path / "a"))
    best = read(tmp_path / "a" / "run.json")["checkpoints"]["best"]
    overrides = [f"ckpt_path={best}", "data.batch_size=500"]
    cfg = make_cfg(*overrides, config_name="eval", output_dir=tmp_path / "e")
    assert cfg.data.name == "shapes"  # eval.yaml's default, replaced by the checkpoint's config
    metrics = evaluate(cfg, overrides=overrides)
    assert metrics["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert read(tmp_path / "e" / "metrics.json") == metrics
    record = read(tmp_path / "e" / "run.json")
    assert record["job_type"] == "eval" and record["trained_with"]["data"] == "digits"


def test_failed_run_keeps_what_was_written(make_cfg, tmp_path):
    out = tmp_path / "run"
    train(make_cfg(*TINY, "debug=limit", output_dir=out))
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    # A second run in the same directory that fails while training (NaN lr -> error on detect).
    bad = make_cfg(*TINY, "debug=limit", "+trainer.detect_anomaly=true",
                   "strategy.optimizer.lr=nan", output_dir=out)
    with pytest.raises(Exception):
        train(bad)
    record = read(out / "run.json")
    assert record["status"] == "failed" and record["error"]
    assert set(checkpoints) <= {p.name for p in (out / "checkpoints").iterdir()}
    assert (out / "metrics.json").is_file()  # the earlier run's metrics are still there


def test_default_command_trains_and_prints_run_dir_and_metrics(tmp_path):
    """`python -m lmvision.train` as a user runs it (W&B offline), with a tiny budget."""
    run_dir = tmp_path / "default"
    result = run_cli(["-m", "lmvision.train", "data.num_images=600", "trainer.max_epochs=1",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                     env={"WANDB_MODE": None, "WANDB_API_KEY": None, "NETRC": str(tmp_path / "none")})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == f"Run directory: {run_dir.resolve()}"
    assert lines[-1].startswith("Metrics: test/acc=")
    assert "W&B is offline (no credentials found); to upload this run later: wandb sync" in result.stdout
    metrics = read(run_dir / "metrics.json")
    assert lines[-1].split()[1] == f"test/acc={metrics['test/acc']:.4f}"
    record = read(run_dir / "run.json")
    assert record["wandb"]["mode"] == "offline" and Path(record["wandb"]["dir"]).is_dir()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()


@pytest.mark.parametrize("args,message", [
    (["data.target=size_of_moon"], "data.target='size_of_moon' is not a target of the shapes dataset"),
    (["backbone=resnet18", "backbone.name=resnet_999"], "backbone.name='resnet_999' is not a torchvision model"),
    (["data.val_fraction=0.7", "data.test_fraction=0.5"], "leaves nothing to train on"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path=/nonexistent/last.ckpt: no such checkpoint file"),
])
def test_bad_options_give_one_clear_error(tmp_path, args, message):
    result = run_cli(["-m", "lmvision.train", *args, "logger=csv", f"hydra.run.dir={tmp_path}"],
                     cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert read(tmp_path / "run.json")["status"] == "failed"


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path):
    result = run_cli(["-m", "lmvision.evaluate", f"ckpt_path={tmp_path / 'no.ckpt'}",
                      f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "no such checkpoint file" in result.stderr and "Traceback" not in result.stderr
