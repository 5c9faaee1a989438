"""Resuming a run, owned by the run session: a resume trains only what is left, takes the run's
config from its checkpoint, and a refused resume (a running run, options or data that would
change what is learned) touches nothing.

One run is trained and stopped once for the module; each test resumes a copy of it.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_inline

ARGS = ["data.num_images=300", "logger=csv", "trainer.max_epochs=4"]
SEEN = "+callbacks.seen._target_=seen_items.RecordSeen"


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory, with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def epochs_logged(run: Path) -> Counter:
    """How many validation rows each epoch has in the run's CSV log."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return Counter(int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("val/acc"))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """An image_classifier run stopped after 2 of its 4 epochs (stop_after_epochs), for which
    run.json says `stopped`; started from the command line, as a user starts one."""
    run = tmp_path_factory.mktemp("resume") / "stopped"
    done = run_inline(["-m", "lmvision.train", *ARGS, "stop_after_epochs=2",
                       f"hydra.run.dir={run}"], cwd=run.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "stopped"
    return run


@pytest.fixture
def run(stopped, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(stopped, copy)
    return copy


def resume(run: Path, *args: str, cwd: Path | None = None):
    """``lmvision-train ckpt_path=<run>/checkpoints/last.ckpt <args>``, as a user types it (run
    in this process: the imports are paid once)."""
    return run_inline(["-m", "lmvision.train", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                       *args], cwd=cwd or run.parent)


def test_a_resume_trains_only_the_epochs_left(run):
    """The resumed process trains epochs 2 and 3 only (its first step is the 3rd epoch's), and
    the CSV log holds one row per epoch: a resume that ignored the checkpoint and trained from
    epoch 0 would end with the same weights (training is deterministic) but fails here."""
    done = resume(run, *ARGS, SEEN, f"+callbacks.seen.path={run / 'seen'}")
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads((run / "seen" / "seen-rank0.json").read_text())
    assert sorted(map(int, seen)) == [2, 3]
    first = json.loads((run / "seen" / "first-step-rank0.json").read_text())
    steps_per_epoch = 2  # 210 training items, batches of 128
    assert first == {"epoch": 2, "global_step": 2 * steps_per_epoch}
    assert epochs_logged(run) == Counter({0: 1, 1: 1, 2: 1, 3: 1})
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["restarts"] == 1
    assert (run / ".hydra" / "resume-1" / "overrides.yaml").is_file()


def test_the_checkpoint_alone_resumes_any_experiment(tmp_path):
    """`ckpt_path=` alone (as the README shows) takes the run's config from the checkpoint:
    here a fusion run, which the default config (image_classifier) is not."""
    run = tmp_path / "fusion"
    started = run_inline(["-m", "lmvision.train", "experiment=fusion_shapes",
                          "data.num_images=300", "logger=csv", "trainer.max_epochs=2",
                          "stop_after_epochs=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert started.returncode == 0, started.stderr[-3000:]
    done = resume(run)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["choices"]["strategy"] == "fusion"
    assert "test/acc_no_text" in json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("args,message", [
    (["data.num_images=600"], "cannot resume with data.num_images=600: the run was trained "
                              "with data.num_images=300"),
    (["strategy=fusion"], "cannot resume with strategy=fusion: the run was trained with "
                          "strategy=image_classifier"),
    (["optimizer.lr=0.1"], "cannot resume with optimizer.lr=0.1"),
])
def test_a_resume_that_would_change_what_is_learned_is_refused_and_touches_nothing(
        run, args, message):
    before = snapshot(run)
    done = resume(run, *args)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("lmvision: error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-3000:]
    assert snapshot(run) == before  # run.json, .hydra (no resume-1), logs, checkpoints


def test_a_resume_whose_data_changed_on_disk_is_refused(run):
    record = json.loads((run / "run.json").read_text())
    record["data_fingerprint"] = "0" * 16  # as if the data had been other when it started
    (run / "run.json").write_text(json.dumps(record))
    before = snapshot(run)
    done = resume(run)
    assert done.returncode == 2 and "the data changed since the run started" in done.stderr
    assert snapshot(run) == before


def test_a_run_that_is_still_running_is_not_resumed(run):
    """A second trainer on a running run is refused in one line; the run's files stay."""
    import fcntl
    import os

    lock = run / ".lmvision.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, as the running trainer holds it
    os.write(fd, json.dumps({"host": "somewhere", "pid": 1, "since": 0}).encode())
    try:
        before = snapshot(run)
        done = resume(run)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "is in use: its run is still running (process 1 on somewhere" in done.stderr
    assert snapshot(run) == before


def test_a_lock_of_a_process_that_ended_does_not_hold(run, tmp_path):
    """A run killed with -9 leaves its lock file: nobody holds the flock, its process is gone,
    so the resume goes on (and only then takes the lock)."""
    import socket

    (run / ".lmvision.lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": 2**22 + 12345, "since": 0}))
    done = resume(run, "trainer.max_epochs=3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / ".lmvision.lock").read_text() == ""  # released at the end
