"""Preemption: a run warned by a signal saves where it is (mid-epoch included), is requeued as
the same SLURM job, resumes by itself, and ends with the weights of a run never stopped."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import assert_same_final_weights
from pytorch_lightning import Callback

from lmvision.train import train

TINY = ["data.num_images=300", "logger=csv"]
SETUPS = {  # augmentation drawn per item (digits), modality dropout drawn in the step (fusion)
    "digits_augmented": ["data=digits", "logger=csv", "trainer.max_epochs=2"],
    "fusion_dropout": [*TINY, "experiment=fusion_shapes", "text_encoder=scratch",
                       "strategy.net.modality_dropout=0.3", "data.batch_size=32",
                       "trainer.max_epochs=3"],
    # tar shards, two loader workers each reading its own (the shards are written per test)
    "webdataset_workers": ["data=webdataset", "logger=csv", "data.image_size=16",
                           "data.batch_size=4", "data.num_workers=2", "backbone=small_cnn",
                           ("data.datamodule.augment=[{_target_:torchvision.transforms.v2."
                            "RandomHorizontalFlip}]"), "trainer.max_epochs=2"],
}
# warned in the second epoch: the loader workers must not start that epoch's batches before the
# checkpoint is restored and the sampler knows its epoch
SETUPS["webdataset_workers_second_epoch"] = [*SETUPS["webdataset_workers"][:-1],
                                             "trainer.max_epochs=3"]
WARNED_AT = {"webdataset_workers_second_epoch": 9}  # the optimiser step; 5 for the others


class SignalAt(Callback):
    """Sends this process the warning signal when training reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR2)


class FakeSubmitit:
    """Stands in for submitit's handler of SIGUSR2: notes the call, then exits as it does."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, signum: int, frame) -> None:
        self.calls.append(signum)
        raise SystemExit(-1)


@pytest.fixture
def submitit_handler():
    handler = FakeSubmitit()
    previous = signal.signal(signal.SIGUSR2, handler)
    yield handler
    signal.signal(signal.SIGUSR2, previous)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_a_warned_job_saves_mid_epoch_and_its_requeued_job_ends_like_an_unstopped_run(
        make_cfg, tmp_path, monkeypatch, submitit_handler, setup):
    setup_args = list(SETUPS[setup])
    if setup.startswith("webdataset"):
        from data_files import overrides_for

        setup_args += overrides_for("webdataset", tmp_path)
    step = WARNED_AT.get(setup, 5)
    args = [*setup_args, "+callbacks.warn._target_=test_preemption.SignalAt",
            f"+callbacks.warn.step={step}"]
    straight = train(make_cfg(*setup_args, output_dir=tmp_path / "a"))
    assert submitit_handler.calls == []

    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # both attempts are the same SLURM job
    run = tmp_path / "b"
    with pytest.raises(SystemExit):
        train(make_cfg(*args, output_dir=run))
    assert submitit_handler.calls == [signal.SIGUSR2]  # handed over: submitit requeues
    record = read(run / "run.json")
    assert record["status"] == "requeued" and record["slurm"]["job_id"] == "4242"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == step + 1 == record["preempted"][0]["step"]  # the batch it was in
    steps_per_epoch = {"digits_augmented": 20, "fusion_dropout": 7, "webdataset_workers": 7,
                       "webdataset_workers_second_epoch": 7}[setup]
    assert last["global_step"] % steps_per_epoch != 0  # mid-epoch
    assert not (run / "checkpoints" / "last.ckpt.part").exists()

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    resumed = train(make_cfg(*args, output_dir=run))  # the same command, requeued
    assert submitit_handler.calls == [signal.SIGUSR2]
    a = assert_same_final_weights(tmp_path / "a" / "checkpoints" / "last.ckpt",
                                  run / "checkpoints" / "last.ckpt")
    assert resumed == straight
    record = read(run / "run.json")
    assert record["status"] == "completed" and record["restarts"] == 1
    assert record["resumed"][0]["from"] == str((run / "checkpoints" / "last.ckpt").resolve())
    assert record["slurm"]["restart_count"] == 1
    with open(run / "csv" / "metrics.csv", newline="") as f:
        epochs = sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/acc")})
    assert epochs == list(range(a["epoch"] + 1))  # one log, each epoch validated once


def test_without_a_handler_on_the_signal_nothing_changes(make_cfg, tmp_path):
    """Not under submitit (the signal's default action), the callback stays out of the way."""
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    train(make_cfg(*TINY, "trainer.max_epochs=1", "debug=limit"))
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    assert read(tmp_path / "run" / "run.json")["status"] == "completed"


def test_another_slurm_job_never_continues_a_run(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    train(make_cfg(*TINY, "trainer.max_epochs=1", "debug=limit"))
    monkeypatch.setenv("SLURM_JOB_ID", "2")
    from lmvision.errors import UserError

    with pytest.raises(UserError, match="already holds a run"):
        train(make_cfg(*TINY, "trainer.max_epochs=1", "debug=limit"))


def test_a_mid_epoch_checkpoint_of_shards_is_not_resumed_with_other_loader_workers(
        make_cfg, tmp_path, monkeypatch, submitit_handler):
    """Shard batches depend on the loader workers: the rest of an epoch cut another way would
    not be the batches skipped, so such a resume is refused, naming the option."""
    from data_files import overrides_for

    from lmvision.errors import UserError

    setup = [*SETUPS["webdataset_workers"], *overrides_for("webdataset", tmp_path)]
    warn = ["+callbacks.warn._target_=test_preemption.SignalAt", "+callbacks.warn.step=5"]
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    run = tmp_path / "b"
    with pytest.raises(SystemExit):
        train(make_cfg(*setup, *warn, output_dir=run))
    other = [a if a != "data.num_workers=2" else "data.num_workers=0" for a in setup]
    with pytest.raises(UserError, match="saved mid-epoch with data.num_workers=2 and is resumed "
                                        "with 0"):
        train(make_cfg(*other, *warn, output_dir=run))
    assert (run / "checkpoints" / "last.ckpt").is_file()
