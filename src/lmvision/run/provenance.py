"""Where and with what a run ran: git commit, package versions, SLURM job, device, W&B run.

Written into the run record (``run.json``) by the run session.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("lmvision", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "transformers",
            "hydra-core", "omegaconf", "wandb", "numpy", "scikit-learn", "timm")


def slurm_job() -> dict[str, Any] | None:
    """This process's SLURM job, from the variables SLURM sets (``None`` outside SLURM)."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    job = {"job_id": job_id, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job["array"] = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return job


def git_info(start: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the lmvision checkout (``None`` outside a git checkout)."""
    where = str(start or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(trainer) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "devices": trainer.num_devices,
        "nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "root_device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "hostname": platform.node(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def wandb_info(loggers) -> dict[str, Any] | None:
    """Id, mode and directory of the W&B run among ``loggers`` (``None`` without W&B)."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None
            return {"id": run.id, "project": run.project, "group": run.group,
                    "mode": "offline" if run.offline else "online",
                    "dir": str(run_dir) if run_dir else None,
                    "url": getattr(run, "url", None)}
    return None
