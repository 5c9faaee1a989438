"""Runs read back from their records (files only, no torch), grouped over seeds and
summarised: the code behind ``lmvision-compare`` and ``notebooks/compare_runs.ipynb``.

Runs group by their effective overrides (the first command's, updated key by key by each
resume's) minus ignored keys. A seed counts once (its mean), in intervals and paired tests.
Which direction is better is never guessed from a name: a run's ``monitor_mode`` gives it for
``monitor``, ``<monitor>_best`` and the test counterpart (``val/x`` -> ``test/x``); durations
(``fit_seconds``, ``wall_time_s``) are lower-is-better; any other metric's is unknown until
the user gives it.
"""

from __future__ import annotations

import csv
import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmvision.errors import UserError

IGNORED = ("seed", "hydra", "paths", "logger", "ckpt_path")  # keys that do not make a group
MODES = ("max", "min")
DURATIONS = ("fit_seconds", "wall_time_s")  # read from run.json: lower is better


@dataclass
class Run:
    """One completed run: where it is, what it changed, its seed and final metrics, and what it
    selects on (``monitor``, ``monitor_mode``; ``None`` where its record does not say)."""

    path: str
    overrides: tuple[str, ...]
    seed: Any
    metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    monitor: str | None = None
    monitor_mode: str | None = None


# -- reading --------------------------------------------------------------------------------------
def key_of(override: str) -> str:
    """The key an override sets: ``++trainer.max_epochs=8`` -> ``trainer.max_epochs``."""
    return override.lstrip("+~").split("=", 1)[0]


def ignored(override: str, ignore: tuple[str, ...]) -> bool:
    key = key_of(override)
    return any(key == k or key.startswith((k + ".", k + "/")) for k in ignore)


def read_yaml_list(path: Path) -> list[str] | None:
    return [str(o) for o in yaml.safe_load(path.read_text()) or []] if path.is_file() else None


def read_overrides(run_dir: Path, record: dict) -> list[str]:
    """The overrides in effect: the first command's (``.hydra/overrides.yaml``, else the
    recorded command), updated key by key by each resume's (``.hydra/resume-<n>/``, in the
    order of ``n``): a later value of the same key wins."""
    first = read_yaml_list(run_dir / ".hydra" / "overrides.yaml")
    if first is None:
        first = [a for a in (record.get("command") or [])[1:] if "=" in a]
    effective = {key_of(o): o for o in first}
    resumes = sorted((int(p.name[len("resume-"):]), p) for p in run_dir.glob(".hydra/resume-*")
                     if p.name[len("resume-"):].isdigit())
    for _, folder in resumes:
        for override in read_yaml_list(folder / "overrides.yaml") or []:
            effective[key_of(override)] = override
    return list(effective.values())


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values of every metric in the run's CSV log (``csv/metrics.csv``)."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    curves: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            epoch = row.get("epoch")
            if not epoch:
                continue
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in (None, ""):
                    curves.setdefault(key, []).append((int(float(epoch)), float(value)))
    return curves


def selection(monitor: Any, mode: Any) -> tuple[str | None, str | None]:
    """A recorded selection metric and direction, ``None`` for what is missing or malformed."""
    return (monitor if isinstance(monitor, str) else None, mode if mode in MODES else None)


def find_runs(patterns: list[str], ignore: tuple[str, ...] = IGNORED) -> tuple[list[Run], int]:
    """Completed runs under the directories or globs ``patterns``, and how many runs there
    did not complete (running or failed)."""
    roots: list[Path] = []
    for pattern in patterns:
        matches = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
        found = [Path(m) for m in sorted(matches) if Path(m).is_dir()]
        if not found:
            raise UserError(f"{pattern}: no such directory (give run or sweep directories, or "
                            "globs that match some)")
        roots += found
    from lmvision.run.record import read_records

    runs, unfinished, seen = [], 0, set()
    for root in roots:
        for run_dir, record, final in read_records(root):
            run_dir = run_dir.resolve()
            if run_dir in seen:
                continue
            seen.add(run_dir)
            if final is None:
                unfinished += 1
                continue
            metrics = {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}
            for key in DURATIONS:
                if isinstance(record.get(key), (int, float)):
                    metrics[key] = float(record[key])
            kept = tuple(sorted(o for o in read_overrides(run_dir, record)
                                if not ignored(o, ignore)))
            if record.get("job_type", "train") != "train":  # an evaluation is not a training run
                kept = (f"job_type={record['job_type']}", *kept)
            runs.append(Run(str(run_dir), kept, record.get("seed"), metrics, read_curves(run_dir),
                            *selection(record.get("monitor"), record.get("monitor_mode"))))
    return runs, unfinished


def wandb_runs(project: str, ignore: tuple[str, ...] = IGNORED) -> tuple[list[Run], int]:
    """Finished runs of a W&B project (``entity/project``): a group is the config values in
    which runs differ, minus the ignored keys; the direction is the config's
    ``strategy.monitor_mode``."""
    try:
        import wandb

        api_runs = list(wandb.Api(timeout=30).runs(project))
    except Exception as e:  # noqa: BLE001 - no network, no key, no such project: one line
        raise UserError(f"--wandb {project}: cannot read the project from W&B "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "compare local run directories instead") from None
    configs = [flatten(dict(r.config)) for r in api_runs]
    varying = {k for c in configs for k in c if len({json.dumps(x.get(k)) for x in configs}) > 1}
    runs, unfinished = [], 0
    for r, config in zip(api_runs, configs):
        if r.state != "finished":
            unfinished += 1
            continue
        kept = tuple(sorted(f"{k}={config[k]}" for k in varying if k in config
                            and not ignored(f"{k}=", ignore)))
        metrics = {k: float(v) for k, v in dict(r.summary).items()
                   if isinstance(v, (int, float)) and not k.startswith("_")}
        runs.append(Run(r.url, kept, config.get("seed"), metrics, {}, *selection(
            config.get("strategy.monitor"), config.get("strategy.monitor_mode"))))
    return runs, unfinished


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else
                   {f"{prefix}{key}": value})
    return out


# -- what is better -------------------------------------------------------------------------------
def directions(runs: list[Run]) -> dict[str, dict[str, list[str]]]:
    """Each metric of known direction, with the runs that say ``max`` and those that say ``min``:
    a run's ``monitor``, ``<monitor>_best`` and test counterpart go its ``monitor_mode``;
    durations: ``min``, by definition. Nothing is read from a metric's name."""
    out: dict[str, dict[str, list[str]]] = {d: {"min": []} for d in DURATIONS}
    for run in runs:
        if run.monitor and run.monitor_mode:
            test = ["test/" + run.monitor[4:]] if run.monitor.startswith("val/") else []
            for name in [run.monitor, run.monitor + "_best", *test]:
                if name not in DURATIONS:
                    out.setdefault(name, {}).setdefault(run.monitor_mode, []).append(run.path)
    return out


def direction(runs: list[Run], metric: str, mode: str | None = None) -> str:
    """``max`` or ``min``: ``mode`` when given, else the runs' direction of ``metric``; a
    UserError when it is unknown or the runs disagree."""
    if mode is not None:
        if mode not in MODES:
            raise UserError(f"--sort-mode {mode}: give max or min")
        return mode
    said = directions(runs).get(metric, {})
    if len(said) == 1:
        return next(iter(said))
    if said:
        raise UserError(f"{metric}: the runs disagree on which direction is better (monitor_mode "
                        + "; ".join(f"{m} in {len(said[m])} run(s), e.g. {said[m][0]}"
                                    for m in MODES) + "); give --sort-mode max or min")
    raise UserError(f"sorting by {metric} (--sort, default the first metric): which direction "
                    "is better is not known (known: the runs' selection metrics, from their "
                    "monitor_mode, and durations); give --sort-mode max or --sort-mode min")


# -- summarising ----------------------------------------------------------------------------------
def group_runs(runs: list[Run]) -> dict[tuple[str, ...], list[Run]]:
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.overrides, []).append(run)
    return groups


def per_seed(runs: list[Run], metric: str) -> dict[Any, float]:
    """``metric`` per seed, the mean of its runs when it ran more than once (a rerun, a sweep
    read twice: repeats are not independent). A run without a seed counts on its own."""
    values: dict[Any, list[float]] = {}
    for r in runs:
        if metric in r.metrics:
            values.setdefault(r.seed if r.seed is not None else ("run", r.path), []).append(
                r.metrics[metric])
    return {seed: sum(v) / len(v) for seed, v in values.items()}


def mean_std_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and the half-width of a 95 % Student-t interval
    (``nan`` for one value). Give one value per seed (:func:`per_seed`)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    from scipy import stats

    return mean, std, float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def paired_test(group: list[Run], baseline: list[Run],
                metric: str) -> tuple[int, float, str | None]:
    """Pairs (same seed, each seed once: :func:`per_seed`), the two-sided p of a paired t-test of
    ``metric``, and why there is none (``nan``): fewer than 2 pairs, or the same non-zero
    difference for every pair (zero variance: t is undefined; all zero: p = 1)."""
    base, ours = per_seed(baseline, metric), per_seed(group, metric)
    pairs = [(value, base[seed]) for seed, value in ours.items() if seed in base]
    if len(pairs) < 2:
        return len(pairs), math.nan, f"{len(pairs)} seed(s) in common with the baseline"
    differences = [x - y for x, y in pairs]
    tolerance = 1e-12 * max(1.0, *(abs(v) for pair in pairs for v in pair))
    if max(differences) - min(differences) <= tolerance:
        if abs(differences[0]) <= tolerance:
            return len(pairs), 1.0, None
        return len(pairs), math.nan, (f"identical paired differences ({differences[0]:+.4g} "
                                      "for every seed: the t statistic is undefined)")
    from scipy import stats

    a, b = zip(*pairs)
    return len(pairs), float(stats.ttest_rel(a, b).pvalue), None


def label(key: tuple[str, ...]) -> str:
    return " ".join(key) or "(no overrides)"


def summarise(runs: list[Run], metrics: list[str], sort: str | None = None,
              baseline: str | None = None, sort_mode: str | None = None) -> list[dict[str, Any]]:
    """One row per group: its overrides, n (runs), seeds and for each metric mean, std, ci95
    over seeds, n (seeds) (and ``pairs``, ``p``, ``p_note``: the paired test against the
    baseline group), sorted best first by ``sort`` (default: the first metric) in the
    direction ``sort_mode`` (default: the runs', see :func:`direction`)."""
    groups = group_runs(runs)
    base_key = None
    if baseline is not None:
        wanted = set(baseline.split())
        matching = [k for k in groups if set(k) == wanted] or \
            [k for k in groups if wanted <= set(k)]
        if len(matching) != 1:
            raise UserError(f"--baseline {baseline!r} matches {len(matching)} groups; give "
                            "overrides that pick one of: " + "; ".join(map(label, groups)))
        base_key = matching[0]
    sort = sort or (metrics[0] if metrics else None)
    if sort and sort not in metrics:
        raise UserError(f"--sort {sort}: not one of the metrics shown ({', '.join(metrics)})")
    sign = (1 if direction(runs, sort, sort_mode) == "min" else -1) if sort else 0
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = {"group": label(key), "n": len(members),
                               "seeds": sorted((r.seed for r in members),
                                               key=lambda x: (not isinstance(x, int), str(x))),
                               "runs": [r.path for r in members]}
        for metric in metrics:
            values = list(per_seed(members, metric).values())
            mean, std, ci = mean_std_ci(values) if values else (math.nan,) * 3
            row[metric] = {"mean": mean, "std": std, "ci95": ci, "n": len(values)}
            if base_key is not None and key != base_key:
                pairs, p, note = paired_test(members, groups[base_key], metric)
                row[metric].update(pairs=pairs, p=p, p_note=note)
        row["baseline"] = key == base_key
        rows.append(row)
    if sort:
        rows.sort(key=lambda r: (math.isnan(r[sort]["mean"]), sign * r[sort]["mean"]
                                 if not math.isnan(r[sort]["mean"]) else 0))
    return rows
