"""Cluster launches through Hydra: hydra/launcher=slurm on a real one-node SLURM cluster
(started by tests/cluster/slurm.sh), and hydra/launcher=local_jobs's options (its sweep runs
as the README's line, in tests/test_readme.py) (marked slow)."""

from __future__ import annotations

import json

import pytest
from conftest import CONF, assert_same_final_weights, run_cli

TINY = ["data.num_images=300", "logger=csv", "debug=limit", "trainer=cpu"]
# what this small node can give each job (2 CPUs): the launcher's defaults ask for more
SMALL_JOBS = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
              "hydra.launcher.timeout_min=15"]


def launcher(*overrides: str):
    from hydra import compose, initialize_config_dir

    import lmvision.config  # noqa: F401  (resolvers)

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra.launcher


def test_the_slurm_launcher_asks_for_one_task_per_device():
    cpu = launcher("hydra/launcher=slurm", "trainer=ddp_cpu")
    assert (cpu.tasks_per_node, cpu.gpus_per_node, cpu.nodes) == (2, None, 1)
    gpus = launcher("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                    "trainer.num_nodes=2", "hydra.launcher.partition=gpu")
    assert (gpus.tasks_per_node, gpus.gpus_per_node, gpus.nodes) == (4, 4, 2)
    assert gpus.partition == "gpu" and gpus.max_num_timeout == 3  # requeued after a time limit
    with pytest.raises(Exception, match="trainer.devices='auto': a cluster job needs"):
        _ = launcher("hydra/launcher=slurm", "trainer=ddp").tasks_per_node
    with pytest.raises(Exception, match="trainer.accelerator='auto': a cluster job must say"):
        _ = launcher("hydra/launcher=slurm").gpus_per_node  # the default trainer: GPU if any
    local = launcher("hydra/launcher=local_jobs", "trainer=cpu")
    assert (local.tasks_per_node, local.gpus_per_node) == (1, 0)
    assert launcher("hydra/launcher=local_jobs", "trainer=gpu").gpus_per_node == 1
    with pytest.raises(Exception, match="local_jobs runs each job as one process"):
        _ = launcher("hydra/launcher=local_jobs", "trainer=ddp_cpu").tasks_per_node


def read(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_a_sweep_through_slurm_is_a_job_array_and_compares_as_one_group(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "lmvision.train", "-m", "seed=0,1", "hydra/launcher=slurm",
                      *SMALL_JOBS, *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                     timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Sweep {sweep}: 2 of 2 jobs completed" in result.stdout
    for job, seed in (("0", 0), ("1", 1)):
        record = read(sweep / job / "run.json")
        assert record["status"] == "completed" and record["seed"] == seed
    # one array: the jobs' submitit folders are <array id>_<index>
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit())
    array = tasks[0]
    assert tasks == [array, f"{array}_0", f"{array}_1"]
    compared = run_cli(["-m", "lmvision.compare", str(sweep), "--format", "json"],
                       cwd=tmp_path, timeout=120)
    assert compared.returncode == 0, compared.stderr[-2000:]
    (group,) = json.loads(compared.stdout)
    assert group["n"] == 2


@pytest.mark.slow
def test_ddp_through_srun_two_processes(slurm, tmp_path):
    """trainer=ddp_cpu asks SLURM for two tasks; srun starts both and Lightning joins them."""
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "lmvision.train", "-m", "seed=0", "hydra/launcher=slurm",
                      *SMALL_JOBS, *TINY, "trainer=ddp_cpu", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    record = read(sweep / "0" / "run.json")
    assert record["status"] == "completed"
    assert record["device"]["world_size"] == 2 and record["device"]["strategy"] == "DDPStrategy"
    logs = sorted(p.name.split("_")[-2] for p in (sweep / ".submitit").rglob("*_log.out"))
    assert logs == ["0", "1"]  # one log per srun task


@pytest.mark.slow
def test_a_warned_job_is_requeued_and_ends_with_the_weights_of_an_unstopped_run(slurm, tmp_path):
    """SLURM's warning signal mid-run to a 2-process DDP job: both processes stop at the same
    batch, the job saves, is requeued by SLURM as the same job, resumes in the same directory
    (the default, timestamped sweep dir) and the same W&B run, and its final weights equal
    those of a run that was never stopped."""
    import csv
    import os
    import subprocess
    import sys
    import time

    args = ["data.num_images=3000", "data.batch_size=16", "trainer=ddp_cpu",
            "trainer.max_epochs=2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "lmvision.train", "-m", "seed=0", "hydra/launcher=slurm",
         *SMALL_JOBS, *args, "logger=many", "trainer.log_every_n_steps=1",
         "+logger.csv.flush_logs_every_n_steps=1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline, steps = time.time() + 600, 0
    while time.time() < deadline and steps < 2:  # wait until two steps are logged
        logs = list((tmp_path / "multirun").rglob("0/csv/metrics.csv"))
        if logs:
            with open(logs[0], newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("train/loss_step")]
            steps = max((int(r["step"]) for r in rows), default=0)
        assert sweep.poll() is None, sweep.communicate()[1][-3000:]
        time.sleep(0.2)
    assert steps >= 2, "the job never started training"
    record_path = logs[0].parent.parent / "run.json"
    job_id = read(record_path)["slurm"]["job_id"]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    while time.time() < deadline and read(record_path).get("status") != "requeued":
        time.sleep(0.5)
    # SLURM holds a requeued job for a while (about 2 minutes) before it may start again: once
    # it is pending again, make it eligible at once
    while time.time() < deadline and read(record_path).get("status") == "requeued":
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)
            break
        time.sleep(0.5)
    out, err = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, err[-3000:]
    run = record_path.parent
    assert f"{run.parent.relative_to(tmp_path)}: 1 of 1 jobs completed" in out

    record = read(run / "run.json")
    assert record["status"] == "completed" and record["restarts"] == 1, record
    (stop,) = record["preempted"]
    assert 2 <= stop["step"] < 2 * 66  # mid-run (66 batches an epoch in each process)
    assert record["resumed"][0]["from"] == str(run / "checkpoints" / "last.ckpt")
    assert record["slurm"]["restart_count"] == 1  # SLURM's own count of the requeue
    offline_runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2  # one per attempt, both under the run's one W&B id
    assert {name.rsplit("-", 1)[1] for name in offline_runs} == {record["wandb"]["id"]}

    straight = tmp_path / "straight"  # the same two processes, never stopped, without SLURM
    plain = {k: None for k in os.environ if k.startswith("SLURM_")}
    result = run_cli(["-m", "lmvision.train", *args, "logger=csv", f"hydra.run.dir={straight}"],
                     cwd=tmp_path, timeout=900, env=plain)
    assert result.returncode == 0, result.stderr[-3000:]
    a = assert_same_final_weights(straight / "checkpoints" / "last.ckpt",
                                  run / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (1, 2 * 66)
