"""Cluster launches through Hydra: hydra/launcher=slurm on a real one-node SLURM cluster
(started by tests/cluster/slurm.sh), and hydra/launcher=local_jobs (marked slow)."""

from __future__ import annotations

import json

import pytest
from conftest import CONF, run_cli

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
    assert gpus.partition == "gpu" and gpus.max_num_timeout == 0  # no requeue until it resumes
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
def test_a_sweep_through_local_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "lmvision.train", "-m", "seed=0,1", "hydra/launcher=local_jobs",
                      *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Sweep {sweep}: 2 of 2 jobs completed" in result.stdout
    assert [read(sweep / j / "run.json")["status"] for j in ("0", "1")] == ["completed"] * 2
    assert (sweep / ".submitit").is_dir()


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
