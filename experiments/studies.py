"""Helpers shared by the study scripts: run `python -m lmvision.train` (and `lmvision.evaluate`)
for real, read the run record, summarise over seeds, say where a study ran, and rewrite the
results section of a study's README."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from lmvision.files import atomic_write
from lmvision.run.provenance import git_info, package_versions

START, END = "<!-- results:start -->", "<!-- results:end -->"
PACKAGES = ("torch", "pytorch-lightning", "torchmetrics")  # named in environment_line()


def train(overrides: list[str], run_dir: Path, env: dict[str, str] | None = None,
          log: Path | None = None) -> dict:
    """Train in a subprocess exactly as a user would; return metrics plus timings of run.json.
    ``env`` adds environment variables (e.g. ``OMP_NUM_THREADS`` for runs side by side);
    ``log`` keeps the run's output in that file as it goes (e.g. where a time limit may kill
    the study)."""
    return _run("lmvision.train", [*overrides, "callbacks.progress_bar.refresh_rate=0"], run_dir,
                env, log)


def evaluate(overrides: list[str], run_dir: Path, env: dict[str, str] | None = None,
             log: Path | None = None) -> dict:
    """Test a checkpoint (``ckpt_path=...`` among ``overrides``) as ``lmvision-eval`` does, in a
    subprocess; return its metrics (and ``wall_time_s``), as :func:`train`."""
    return _run("lmvision.evaluate", overrides, run_dir, env, log)


def sampling_settings(run_dir: Path) -> str:
    """The temperature and classifier-free guidance weight a ``pixel_lm`` run sampled with, as
    "temperature 1, guidance 2", from its ``.hydra/config.yaml`` (``evaluation.sampling``)."""
    from omegaconf import OmegaConf

    sampling = OmegaConf.load(run_dir / ".hydra" / "config.yaml").evaluation.sampling
    return (f"temperature {float(sampling.temperature):g}, "
            f"guidance {float(sampling.guidance):g}")


def read_run(run_dir: Path, stdout: str = "") -> dict:
    """A finished run's metrics plus the timings of its run record (``fit_seconds`` is
    ``None`` for an evaluation)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = json.loads((run_dir / "run.json").read_text())
    return {**metrics, "fit_seconds": record.get("fit_seconds"),
            "wall_time_s": record["wall_time_s"], "last_lines": stdout.strip().splitlines()[-2:]}


# A --smoke (or --quick) check of a study script may set this: its runs then go through the same
# main() in the script's own process (imports paid once; lmvision.run.inline), not a new one.
IN_PROCESS = False


def _run(module: str, overrides: list[str], run_dir: Path, env: dict[str, str] | None,
         log: Path | None) -> dict:
    argv = [*overrides, f"hydra.run.dir={run_dir}"]
    cmd = [sys.executable, "-m", module, *argv]
    env = {"WANDB_SILENT": "true", **(env or {})}
    if IN_PROCESS:
        from lmvision.run.inline import run_main

        code, stdout, stderr = run_main(module, argv, Path.cwd(), env)
        if log is not None:
            Path(log).write_text(stdout + stderr)
    elif log is None:
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        with open(log, "w") as out:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, **env}).returncode
        stdout = stderr = Path(log).read_text()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return read_run(run_dir, stdout)


def mean_std(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def environment_line() -> str:
    """When and where a study ran: date, CPU cores and model, GPU, Python, package versions and
    the lmvision commit, in one line."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    versions = package_versions()
    packages = ", ".join(f"{name} {versions.get(name)}" for name in PACKAGES)
    git = git_info()
    if os.environ.get("LMVISION_COMMIT"):  # a copied tree (a GPU machine): its .git may be stale
        git = {"commit": os.environ["LMVISION_COMMIT"], "dirty": False}
    commit = "no git checkout" if not git["commit"] else (
        f"commit {git['commit'][:10]}" + (" with uncommitted changes" if git["dirty"] else ""))
    return (f"Measured on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {cores} CPU cores "
            f"({cpu}, {platform.system()} {platform.machine()}), {gpu}, Python "
            f"{platform.python_version()}, {packages}; lmvision {commit}.")


def median_seconds(call: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """The median wall time of ``repeats`` calls of ``call``, after ``warmup`` untimed ones
    (whatever must finish inside the timing, e.g. a GPU sync, belongs in ``call``)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_results(readme: Path, text: str, section: str = "results") -> None:
    """Replace what stands between the ``section`` markers of ``readme`` (``<!-- results:start
    -->`` ... ``<!-- results:end -->`` by default) with ``text`` (atomically)."""
    START, END = f"<!-- {section}:start -->", f"<!-- {section}:end -->"  # noqa: N806
    content = readme.read_text()
    if START not in content or END not in content.split(START, 1)[1]:
        raise SystemExit(f"{readme} has no {START} ... {END} section")
    head, rest = content.split(START, 1)
    tail = rest.split(END, 1)[1]
    mode = readme.stat().st_mode

    def write(tmp: str) -> None:
        Path(tmp).write_text(f"{head}{START}\n{text}\n{END}{tail}")
        os.chmod(tmp, mode)  # keep the README's permissions (a temporary file starts at 0600)

    atomic_write(readme, write)
