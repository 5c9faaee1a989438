"""Hydra callbacks (listed in ``conf/hydra/default.yaml``). Only light imports here.

* :class:`RunDirGuard` refuses, before Hydra writes anything, a run pointed at a directory that
  holds another run. A training run given ``ckpt_path`` of a run continues in that run's
  directory and keeps its first ``.hydra`` config: Hydra writes nothing there, and the run
  session writes this restart's config beside it (``.hydra/resume-<n>/``) once the resume is
  accepted (a refused resume leaves the directory as it was).
* :class:`SweepGuard` refuses a sweep whose directory already holds the runs of a sweep
  (except an Optuna search continuing its study: its jobs are named by trial number).

Hydra turns an ``Exception`` raised by a callback into a warning and goes on, so these exit
with ``SystemExit`` instead.
* :class:`SweepSummary` ends a sweep (``-m``) with one line per job, read from the jobs' run
  records, and a non-zero exit status if any job failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lmvision.run.cli import exit_with_error
from lmvision.errors import UserError
from lmvision.files import read_json
from lmvision.ranks import is_rank_zero
from lmvision.run.record import run_of
from lmvision.run.resume import claim_run_dir


class RunDirGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_rank_zero():  # DDP workers share rank 0's directory
            return
        job_type = job_type_of(config)
        own = run_of(config.get("ckpt_path")) if job_type == "train" else None
        chosen = any(o.startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra)
        if own is not None and not chosen:  # a resume continues in its run's directory
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.run.dir = str(own)
        run_dir = Path(str(config.hydra.run.dir))
        try:
            resuming = claim_run_dir(run_dir, job_type, config.get("ckpt_path"))
        except UserError as err:  # Hydra turns a callback's Exception into a mere warning
            exit_with_error(str(err))
        if resuming:  # the session writes .hydra/resume-<n>/ once the resume is accepted
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None


class SweepGuard(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        # the sweep directory names the run (``${name}``: ``${hydra:runtime.choices...}``), and
        # Hydra sets what ``${hydra:...}`` reads only when a job starts: set it now, for the
        # sweep's config, so the directory resolves here, in the sweeper and in cluster jobs
        # (always: a config left from an earlier run in this process would name another sweep)
        HydraConfig.instance().set_config(config)
        if continues_a_study(config):  # job directories are trial numbers: never reused
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        held = sorted(p.parent.name for p in sweep_dir.glob("*/run.json")) if sweep_dir.is_dir() else []
        if held:
            exit_with_error(f"hydra.sweep.dir={sweep_dir} already holds the runs of a sweep (jobs "
                            f"{', '.join(held[:5])}{', ...' if len(held) > 5 else ''}); lmvision "
                            "never writes over another run: choose a new hydra.sweep.dir")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        lines, failed = summarize_sweep(Path(str(config.hydra.sweep.dir)),
                                        config.get("optimized_metric"))
        print("\n".join(lines), flush=True)
        if failed and not continues_a_study(config):  # a search has its own failure limit
            raise SystemExit(1)


def continues_a_study(config: DictConfig) -> bool:
    """Whether the sweeper is the resumable Optuna search (``hydra/sweeper=optuna_search``)."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
    return target.endswith("OptunaSearchSweeper")


def job_type_of(config: DictConfig) -> str:
    """``eval`` for lmvision-eval and for ``lmvision-train train=false``, else ``train``."""
    job_type = config.get("job_type", "train")
    return "eval" if job_type == "train" and not config.get("train", True) else job_type


def summarize_sweep(sweep_dir: Path, metric: str | None) -> tuple[list[str], int]:
    """One line per job of a sweep (from each job's run.json) and the number that failed."""
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir() or (p / "run.json").is_file()),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    rows, failed = [], 0
    for job in jobs:
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = " ".join(OmegaConf.load(overrides_file)) if overrides_file.is_file() else ""
        record = read_json(job / "run.json", {})
        status = record.get("status", "did not start")
        if status in ("completed", "stopped"):  # stopped: ended by stop_after_epochs, resumable
            value = read_json(job / "metrics.json", {}).get(metric) if metric else None
            detail = f"{metric}={value:.4f}" if isinstance(value, float) else ""
        else:
            failed += 1
            detail = record.get("error", "no run record: see the job's log")
        rows.append(f"  job {job.name}: {status:<9} {overrides}  {detail}".rstrip())
    done = len(jobs) - failed
    head = f"Sweep {sweep_dir}: {done} of {len(jobs)} jobs completed" + (f", {failed} failed" if failed else "")
    return [head, *rows], failed
