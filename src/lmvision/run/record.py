"""The run record: ``metrics.json``, ``run.json``, and the lines a run prints last.

Every run writes into its Hydra run directory. ``run.json`` is written when the run starts
(status ``running``), updated when it ends (``completed``) or fails (``failed``, with the
error); nothing already written is removed. All files are written atomically, and only by the
process of global rank 0.

A directory belongs to one run: a run never writes into a directory that holds another run's
record, except to resume that run (``ckpt_path`` inside it), and then it continues the same
record (``restarts`` counts the resumptions).
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from lmvision.errors import Preempted, UserError, message_of
from lmvision.files import read_json, write_json
from lmvision.ranks import is_rank_zero
from lmvision.run.provenance import git_info, package_versions, slurm_job


def run_of(ckpt_path: str | None) -> Path | None:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt``, with ``<run>/run.json``)."""
    if not ckpt_path:
        return None
    run = Path(str(ckpt_path)).expanduser().resolve().parent.parent
    return run if (run / "run.json").is_file() else None


def flat_metrics(*sources: dict) -> dict[str, float]:
    """Merge metric dicts (tensors or numbers) into ``{"test/acc": 0.97, ...}`` with plain floats."""
    out: dict[str, float] = {}
    for source in sources:
        for key, value in (source or {}).items():
            try:
                number = float(value.item() if hasattr(value, "item") else value)
            except (TypeError, ValueError, RuntimeError):
                continue
            if math.isfinite(number):
                out[str(key)] = number
    return dict(sorted(out.items()))


class RunRecord:
    """Writes ``run.json`` and ``metrics.json`` of one run (only on the global rank 0 process).

    Args:
        run_dir: The run directory.
        seed: The run's seed.
        job_type: ``train`` or ``eval``.
        choices: The option chosen in each config group (``{"data": "shapes", ...}``).
        resumed_from: The checkpoint of the run in ``run_dir`` that this process resumes: the
            record there is continued (its first start kept, ``restarts`` counted) instead of
            being started anew.
        monitor, monitor_mode: The selection metric and its direction (``max`` or ``min``), so
            that a reader of records (``lmvision-compare``) knows which way is better.
    """

    def __init__(self, run_dir: Path, seed: int | None, job_type: str,
                 choices: dict[str, str] | None = None, resumed_from: str | None = None,
                 monitor: str | None = None, monitor_mode: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = is_rank_zero()
        self.started = time.time()
        earlier = self._earlier() if resumed_from else {}
        self.info: dict[str, Any] = {
            "status": "running",
            "job_type": job_type,
            "seed": seed,
            "run_dir": str(self.run_dir.resolve()),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git": git_info(),
            "packages": package_versions(),
            "python": platform.python_version(),
            "choices": choices or {},
            "slurm": slurm_job(),
            "monitor": monitor,
            "monitor_mode": monitor_mode,
        }
        if earlier:
            self.info = {**earlier, **{k: v for k, v in self.info.items() if k != "started_at"},
                         "status": "running", "restarts": earlier.get("restarts", 0) + 1,
                         "resumed": [*earlier.get("resumed", []),
                                     {"at": self.info["started_at"], "from": str(resumed_from),
                                      "previous_status": earlier.get("status")}]}
            for stale in ("error", "ended_at"):
                self.info.pop(stale, None)
        self._write()

    @property
    def previous_wandb_id(self) -> str | None:
        """The W&B run id this run had before it was resumed (to continue the same W&B run)."""
        return (self.info.get("wandb") or {}).get("id") if self.info.get("restarts") else None

    def _earlier(self) -> dict[str, Any]:
        return read_json(self.run_dir / "run.json", {})

    def update(self, **fields: Any) -> None:
        self.info.update(fields)
        self._write()

    def finish(self, metrics: dict[str, float], status: str = "completed", **fields: Any) -> None:
        """Write metrics.json, then mark run.json ``completed`` (or ``stopped``: a job that ended
        before the run's last epoch, to be resumed)."""
        if self.enabled:
            write_json(self.run_dir / "metrics.json", metrics)
        self.update(status=status, wall_time_s=round(time.time() - self.started, 3),
                    ended_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields)

    def fail(self, error: BaseException) -> None:
        """Mark run.json failed with the error; checkpoints and earlier files stay."""
        text = message_of(error) if isinstance(error, UserError) else str(error)
        self.update(status="failed", error=f"{type(error).__name__}: {text}",
                    wall_time_s=round(time.time() - self.started, 3),
                    ended_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def requeued(self, stop: Preempted) -> None:
        """Mark run.json ``requeued``: the job saved where it was and will continue."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.update(status="requeued", ended_at=now,
                    wall_time_s=round(time.time() - self.started, 3),
                    preempted=[*self.info.get("preempted", []),
                               {"at": now, "epoch": stop.epoch, "step": stop.step,
                                "checkpoint": stop.checkpoint}])

    def _write(self) -> None:
        if self.enabled:
            write_json(self.run_dir / "run.json", self.info)


def print_summary(run_dir: Path, metrics: dict[str, float], monitor: str | None = None) -> None:
    """The last lines of a run: where it is and its headline metrics (the test metrics and the
    best value of the selection metric ``monitor``)."""
    headline = {k: v for k, v in metrics.items()
                if (k.startswith("test/") and not k.endswith("/loss")) or k == f"{monitor}_best"}
    print(f"Run directory: {Path(run_dir).resolve()}", flush=True)
    print("Metrics: " + "  ".join(f"{k}={v:.4f}" for k, v in headline.items()), flush=True)


def read_records(root: str | Path) -> Iterator[tuple[Path, dict[str, Any], dict | None]]:
    """Every run record under ``root``: its directory, its ``run.json`` and, for a completed
    run, its ``metrics.json`` (``None`` for a run that is running, failed or was stopped).

    Reads only the run record, so it works on run directories copied from a cluster without
    lmvision's heavy dependencies.
    """
    for record_path in sorted(Path(root).rglob("run.json")):
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{record_path}: not a run record ({e})") from None
        metrics_path = record_path.with_name("metrics.json")
        completed = record.get("status") == "completed" and metrics_path.is_file()
        yield (record_path.parent, record,
               json.loads(metrics_path.read_text()) if completed else None)


def collect_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every completed run under ``root`` as one flat row: choices, seed, metrics, timings."""
    rows = []
    for run_dir, record, metrics in read_records(root):
        if metrics is None:
            continue
        row: dict[str, Any] = {"run_dir": str(run_dir), "seed": record.get("seed"),
                               "job_type": record.get("job_type"),
                               "fit_seconds": record.get("fit_seconds"),
                               "wall_time_s": record.get("wall_time_s")}
        row.update(record.get("choices") or {})
        row.update(metrics)
        rows.append(row)
    return rows
