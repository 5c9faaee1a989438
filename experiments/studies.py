"""Helpers shared by the study scripts: run `python -m lmvision.train` for real, read the run
record, summarise over seeds, and rewrite the results section of a study's README."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"


def train(overrides: list[str], run_dir: Path) -> dict:
    """Train in a subprocess exactly as a user would; return metrics plus timings of run.json."""
    cmd = [sys.executable, "-m", "lmvision.train", *overrides, f"hydra.run.dir={run_dir}",
           "callbacks.progress_bar.refresh_rate=0"]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "WANDB_SILENT": "true"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = json.loads((run_dir / "run.json").read_text())
    return {**metrics, "fit_seconds": record["fit_seconds"], "wall_time_s": record["wall_time_s"],
            "last_lines": done.stdout.strip().splitlines()[-2:]}


def mean_std(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def write_results(readme: Path, text: str) -> None:
    """Replace what stands between the results markers of ``readme`` with ``text``."""
    content = readme.read_text()
    head, rest = content.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
