"""End-to-end runs: experiments under fast_dev_run, the default command, the run record,
learning, reproducibility, exact resume, the selection metric, init_from, evaluation."""

from __future__ import annotations

import csv
import json
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import CONF, assert_same_final_weights, run_cli

from lmvision.errors import UserError
from lmvision.evaluate import evaluate
from lmvision.run.record import collect_runs
from lmvision.train import train, train_and_score

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TINY = ["data.num_images=300", "logger=csv"]  # a tiny but real dataset, no W&B files
CLASSIFIER_TEST_METRICS = {"test/acc", "test/f1_macro", "test/precision_macro", "test/recall_macro",
                           "test/loss"}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# experiments on a user's data: tiny files in the real format, and a small network on a CPU
NEEDS_FILES = {"pixel_lm_cifar10": ["strategy.net.num_colors=64", "strategy.net.dim=64",
                                    "strategy.net.depth=2", "strategy.net.heads=2",
                                    "evaluation.samples.images=0"]}


# pixel_lm pretraining probes and samples even in a fast_dev_run (8-11 s each): `make test`
@pytest.mark.parametrize("experiment", [
    pytest.param(e, marks=pytest.mark.slow) if e.startswith("pixel_lm") else e for e in EXPERIMENTS])
def test_every_experiment_runs_with_fast_dev_run(make_cfg, tmp_path, experiment):
    extra = []
    if experiment in NEEDS_FILES:
        from data_files import overrides_for

        extra = [*overrides_for("cifar10", tmp_path), *NEEDS_FILES[experiment]]
    metrics = train(make_cfg(f"experiment={experiment}", "debug=fdr", *extra))
    expected = set(CLASSIFIER_TEST_METRICS)
    if experiment.startswith("pixel_lm"):  # pretraining: bits per dim and the probes
        expected = {"test/loss", "test/bits_per_dim", "probe/acc_best", "probe/acc_pixels",
                    "probe/acc_random_init", "probe/acc_all_layers",
                    "probe/acc_random_init_all_layers", "probe/cv_acc_best",
                    "probe/cv_acc_pixels", "probe/cv_acc_random_init"}
    if experiment == "tagging_shapes":
        expected.add("test/exact_match")
    if experiment.startswith("fusion"):
        expected.add("test/acc_no_text")
    if experiment == "aux_text_shapes":  # classes held out of training
        expected |= {"test/acc_seen", "test/acc_unseen", "test/acc_hm", "test/acc_unseen_zsl"}
    assert expected <= set(metrics)
    record = read(tmp_path / "run" / "run.json")
    assert record["status"] == "completed" and record["choices"]["experiment"] == experiment
    assert read(tmp_path / "run" / "metrics.json") == metrics
    # fast_dev_run checks the code path only: it leaves no checkpoint behind (fusion's would
    # carry the 90 MB text encoder)
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_run_record_contents(make_cfg, tmp_path):
    out = tmp_path / "run"
    metrics = train(make_cfg(*TINY, "debug=limit", "seed=3"))
    assert CLASSIFIER_TEST_METRICS | {"val/acc_best"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    record = read(out / "run.json")
    assert record["status"] == "completed" and record["seed"] == 3
    assert {"commit", "dirty"} == set(record["git"])
    assert record["packages"]["torch"] == metadata.version("torch")
    assert len(record["data_fingerprint"]) == 16
    assert record["device"]["accelerator"] == "CPUAccelerator"
    assert record["wall_time_s"] > 0 and record["fit_seconds"] > 0
    assert record["checkpoints"]["last"] == str(out / "checkpoints" / "last.ckpt")
    assert Path(record["checkpoints"]["best"]).is_file()
    assert record["tested_checkpoint"] == record["checkpoints"]["best"]
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["test_confusion_matrix.png", "test_predictions.png"]
    (row,) = collect_runs(tmp_path)
    assert row["seed"] == 3 and row["backbone"] == "small_cnn" and row["test/acc"] == metrics["test/acc"]


def test_a_short_run_learns_far_above_chance(make_cfg):
    """Three epochs on the real digits scans: a broken loss, label or optimiser stays near 0.1."""
    metrics = train(make_cfg("data=digits", "logger=csv", "trainer.max_epochs=3",
                             "callbacks.progress_bar.refresh_rate=0"))
    assert metrics["test/acc"] >= 0.6, metrics
    assert metrics["val/acc_best"] >= 0.6


def test_multilabel_tagging_uses_bce_and_reports_exact_match(make_cfg):
    metrics = train(make_cfg(*TINY, "debug=limit", "experiment=tagging_shapes"))
    assert "test/exact_match" in metrics and "test/f1_macro" in metrics
    # BCE over 17 tags: at initialisation the loss is near log(2), far below a 17-way CE's log(17)
    assert metrics["test/loss"] < 1.0


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


RESUMABLE = {
    "image_classifier": [*TINY],
    "fusion_scratch": [*TINY, "experiment=fusion_shapes", "text_encoder=scratch",
                       "strategy.net.modality_dropout=0.3"],
}


@pytest.mark.parametrize("setup", sorted(RESUMABLE))
def test_resume_in_place_equals_an_uninterrupted_run(make_cfg, tmp_path, setup):
    """4 epochs straight vs 2 epochs, stop, resume to 4 in the same directory: same weights,
    same metrics (best value included), one record, one CSV log, no renamed checkpoints. The
    resume repeats the first command's options (image_classifier) or gives ckpt_path alone
    (fusion_scratch): the run's config comes from its checkpoint either way."""
    args = [*RESUMABLE[setup], "trainer.max_epochs=4"]
    straight = train(make_cfg(*args, output_dir=tmp_path / "a"))
    run = tmp_path / "b"
    first_job = train(make_cfg(*args, "stop_after_epochs=2", output_dir=run))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    assert read(run / "run.json")["status"] == "stopped" and "test/acc" not in first_job
    last = run / "checkpoints" / "last.ckpt"
    again = args if setup == "image_classifier" else []
    resumed = train(make_cfg(*again, f"ckpt_path={last}", output_dir=run))

    assert_same_final_weights(tmp_path / "a" / "checkpoints" / "last.ckpt", last)
    assert resumed == straight
    record = read(run / "run.json")
    assert record["status"] == "completed" and record["restarts"] == 1
    assert record["resumed"][0]["from"] == str(last)
    assert all(Path(p).is_file() for p in record["checkpoints"].values())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    epochs = sorted({int(r["epoch"]) for r in csv_rows(run) if r.get("val/acc")})
    assert epochs == [0, 1, 2, 3]  # the first run's rows kept, the resumed run's appended


def test_last_checkpoint_is_the_end_of_the_last_epoch(make_cfg, tmp_path):
    """With no improvement after the first epoch, best stays at epoch 0 but last moves on."""
    train(make_cfg(*TINY, "trainer.max_epochs=3", "backbone=vit_small", "backbone.depth=1",
                   "optimizer.lr=1e-12"))  # no BatchNorm, no learning: val/acc never improves
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == 3 * 2  # 210 training items, batch 128


def test_selection_metric_can_be_the_lowest_validation_loss(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "trainer.max_epochs=4", "strategy.monitor=val/loss",
                   "strategy.monitor_mode=min")
    score = train_and_score(cfg)
    rows = [r for r in csv_rows(tmp_path / "run") if r.get("val/loss")]
    losses = {int(r["epoch"]): float(r["val/loss"]) for r in rows}
    best_epoch = min(losses, key=losses.get)
    assert score == pytest.approx(losses[best_epoch], abs=1e-6)  # optimized_metric follows
    assert (tmp_path / "run" / "checkpoints" / f"best-epoch{best_epoch:03d}.ckpt").is_file()
    metrics = read(tmp_path / "run" / "metrics.json")
    assert "val/loss_best" in metrics and "val/acc_best" not in metrics


def test_train_false_tests_a_checkpoint(make_cfg, tmp_path):
    """``train=false`` rebuilds what was trained from the checkpoint's config (as lmvision-eval
    does): the MLP head it was trained with is not repeated on the command line."""
    trained = train(make_cfg(*TINY, "debug=limit", "trainer.limit_test_batches=1.0", "head=mlp",
                             output_dir=tmp_path / "a"))
    best = read(tmp_path / "a" / "run.json")["checkpoints"]["best"]
    tested = train(make_cfg("logger=csv", "train=false", f"ckpt_path={best}",
                            output_dir=tmp_path / "t"))
    assert tested["test/acc"] == trained["test/acc"] and tested["test/loss"] == trained["test/loss"]
    assert read(tmp_path / "t" / "run.json")["tested_checkpoint"] == best
    assert not (tmp_path / "t" / "checkpoints").exists()


def test_init_from_loads_network_weights_only(make_cfg, tmp_path):
    """A fusion run starts its image encoder from an image_classifier run (not its optimiser)."""
    train(make_cfg(*TINY, "debug=limit", "trainer.max_epochs=2", output_dir=tmp_path / "a"))
    source = tmp_path / "a" / "checkpoints" / "last.ckpt"
    train(make_cfg(*TINY, "experiment=fusion_shapes", "debug=limit", f"init_from={source}",
                   "init_from_prefix=image_encoder", output_dir=tmp_path / "f"))
    started = torch.load(tmp_path / "f" / "checkpoints" / "last.ckpt", weights_only=False)
    # a new run: its one epoch of 2 steps, not the source's 2 epochs and 4 steps
    assert (started["epoch"], started["global_step"]) == (0, 2)
    record = read(tmp_path / "f" / "run.json")["init_from"]
    assert record["checkpoint"] == str(source.resolve()) and record["prefix"] == "image_encoder"
    assert record["loaded"] > 0 and not record["missing"] and not record["unused"]
    # the classifier's head was not wanted (it has 4 classes, fusion_shapes 24): it stays behind
    with pytest.raises(UserError, match=r"init_from=.*do not fit this network .*"
                                        r"init_from_prefix= one of .*image_encoder"):
        train(make_cfg(*TINY, "experiment=fusion_shapes", f"init_from={source}",
                       output_dir=tmp_path / "g"))


def test_init_from_copies_the_weights(tmp_path):
    from lmvision.run.checkpoints import load_weights
    from lmvision.nn.classifiers import ImageClassifier
    from lmvision.nn.heads import LinearHead
    from lmvision.nn.image_encoders import SmallCNN

    def net():
        return ImageClassifier(SmallCNN(widths=(8,), out_dim=8), LinearHead, num_classes=3)

    source = net()
    checkpoint = {"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}
    target = net()
    report = load_weights(target, checkpoint, "source.ckpt", prefix="image_encoder")
    for key, value in source.image_encoder.state_dict().items():
        assert torch.equal(target.image_encoder.state_dict()[key], value)
    assert not torch.equal(target.head.fc.weight, source.head.fc.weight)
    assert report["missing"] == [] and report["loaded"] == len(source.image_encoder.state_dict())
    full = load_weights(net(), checkpoint, "source.ckpt")
    assert full["loaded"] == len(source.state_dict())


def test_eval_tests_a_checkpoint_with_its_training_config(make_cfg, tmp_path):
    trained = train(make_cfg("logger=csv", "debug=limit", "trainer.limit_test_batches=1.0",
                             "data=digits", "data.image_size=8", "backbone=vit_small",
                             "backbone.patch_size=2", "seed=1", output_dir=tmp_path / "a"))
    best = read(tmp_path / "a" / "run.json")["checkpoints"]["best"]
    overrides = [f"ckpt_path={best}", "data.batch_size=500"]
    cfg = make_cfg(*overrides, config_name="eval", output_dir=tmp_path / "e")
    assert cfg.data.name == "shapes"  # eval.yaml's default, replaced by the checkpoint's config
    metrics = evaluate(cfg)
    assert metrics["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert read(tmp_path / "e" / "metrics.json") == metrics
    record = read(tmp_path / "e" / "run.json")
    assert record["job_type"] == "eval" and record["seed"] == 1
    assert record["choices"]["data"] == "digits" and record["choices"]["backbone"] == "vit_small"
    assert record["trained_with"]["data"] == "digits"


def test_a_failing_run_keeps_what_it_had_written(make_cfg, tmp_path, monkeypatch):
    """A crash in the second epoch: run.json says failed (with the error), the first epoch's
    checkpoints stay, and the error keeps its type (a bug is not disguised as a user error)."""
    from lmvision.strategies.classification import ClassificationStrategy

    original = ClassificationStrategy.step

    def crash_in_epoch_1(self, batch, split):
        if split == "train" and self.current_epoch == 1:
            raise RuntimeError("simulated crash in epoch 1")
        return original(self, batch, split)

    monkeypatch.setattr(ClassificationStrategy, "step", crash_in_epoch_1)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_cfg(*TINY, "trainer.max_epochs=3", output_dir=out))
    record = read(out / "run.json")
    assert record["status"] == "failed" and "simulated crash in epoch 1" in record["error"]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0


@pytest.mark.slow
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
    assert lines[-1].split()[-1] == f"val/acc_best={metrics['val/acc_best']:.4f}"
    record = read(run_dir / "run.json")
    assert record["wandb"]["mode"] == "offline" and Path(record["wandb"]["dir"]).is_dir()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()
