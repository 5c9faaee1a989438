"""``lmvision-compare``: compare runs and sweeps across seeds from their run records.

    lmvision-compare multirun/2026-11-26/10-00-00 'outputs/**/digits-*' --metric test/acc
    lmvision-compare multirun/... --baseline strategy=image_classifier --format markdown
    lmvision-compare multirun/... --plot figures/
    lmvision-compare --wandb my-team/lmvision --metric test/acc

Each run directory holds ``run.json`` (status, seed, command), ``metrics.json`` (final
metrics), ``.hydra/overrides.yaml`` (what the command changed) and ``csv/metrics.csv`` (per
epoch, with ``logger=csv``). Runs that differ only in ``seed`` (and in where they write:
``hydra.*``, ``paths.*``, ``logger``, ``ckpt_path``) form a group; for each group and metric the
table gives n, mean ± std, a 95 % confidence interval (Student's t), and with ``--baseline`` a
paired t-test against the baseline group over the seeds both have. Reads files only (no torch),
so it runs on records copied from a cluster.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmvision.errors import UserError

IGNORED = ("seed", "hydra", "paths", "logger", "ckpt_path")  # keys that do not make a group
LOWER_IS_BETTER = ("loss", "bits_per_dim", "seconds", "error")  # words in a metric's name
FORMATS = ("rich", "markdown", "csv", "json")


@dataclass
class Run:
    """One completed run: where it is, what it changed, its seed and final metrics."""

    path: str
    overrides: tuple[str, ...]
    seed: Any
    metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


# -- reading --------------------------------------------------------------------------------------
def ignored(override: str, ignore: tuple[str, ...]) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return any(key == k or key.startswith((k + ".", k + "/")) for k in ignore)


def read_overrides(run_dir: Path, record: dict) -> list[str]:
    """The command line's overrides: ``.hydra/overrides.yaml``, else the recorded command."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        import yaml

        return [str(o) for o in yaml.safe_load(path.read_text()) or []]
    return [a for a in (record.get("command") or [])[1:] if "=" in a]


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


def find_runs(patterns: list[str], ignore: tuple[str, ...] = IGNORED) -> tuple[list[Run], int]:
    """Completed runs under the directories or globs ``patterns``, and how many runs there
    did not complete (running or failed)."""
    roots: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else \
            [pattern]
        found = [Path(m) for m in matches if Path(m).is_dir()]
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
            for key in ("fit_seconds", "wall_time_s"):
                if isinstance(record.get(key), (int, float)):
                    metrics[key] = float(record[key])
            kept = tuple(sorted(o for o in read_overrides(run_dir, record)
                                if not ignored(o, ignore)))
            if record.get("job_type", "train") != "train":  # an evaluation is not a training run
                kept = (f"job_type={record['job_type']}", *kept)
            runs.append(Run(str(run_dir), kept, record.get("seed"), metrics,
                            read_curves(run_dir)))
    return runs, unfinished


def wandb_runs(project: str, ignore: tuple[str, ...] = IGNORED) -> tuple[list[Run], int]:
    """Finished runs of a W&B project (``entity/project``): a group is the config values in
    which runs differ, minus the ignored keys."""
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
        runs.append(Run(r.url, kept, config.get("seed"), metrics))
    return runs, unfinished


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# -- summarising ----------------------------------------------------------------------------------
def default_metrics(runs: list[Run]) -> list[str]:
    """The test metric of what the runs select on (``<monitor>_best`` in their metrics, e.g.
    ``val/<metric>_best`` → ``test/<metric>``) and the selection metric itself."""
    names: list[str] = []
    for run in runs:
        for key in run.metrics:
            if key.startswith("val/") and key.endswith("_best"):
                monitor = key[:-len("_best")]
                for name in ("test/" + monitor[len("val/"):], key):
                    if name not in names and any(name in r.metrics for r in runs):
                        names.append(name)
    return names or sorted({k for r in runs for k in r.metrics if k.startswith("test/")})[:3]


def lower_is_better(metric: str) -> bool:
    """Losses, bits, errors and times (``*_s``) sort lowest first; the rest highest first."""
    name = metric.split("/")[-1].removesuffix("_best")
    return name.endswith("_s") or any(word in name.split("_") or word == name
                                      for word in LOWER_IS_BETTER) or "loss" in name


def group_runs(runs: list[Run]) -> dict[tuple[str, ...], list[Run]]:
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.overrides, []).append(run)
    return groups


def mean_std_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and the half-width of a 95 % Student-t interval
    (``nan`` for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    from scipy import stats

    return mean, std, float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def paired_test(group: list[Run], baseline: list[Run], metric: str) -> tuple[int, float]:
    """Pairs (same seed) and the two-sided p-value of a paired t-test of ``metric`` (with the
    same difference for every pair, 0 when it is not zero and 1 when it is). A seed that a
    group ran more than once (the same sweep read twice, a rerun) counts once, with the mean
    of its runs: repeats are not independent pairs."""
    def by_seed(runs: list[Run]) -> dict[Any, float]:
        values: dict[Any, list[float]] = {}
        for r in runs:
            if metric in r.metrics:
                values.setdefault(r.seed, []).append(r.metrics[metric])
        return {seed: sum(v) / len(v) for seed, v in values.items()}

    base, ours = by_seed(baseline), by_seed(group)
    pairs = [(value, base[seed]) for seed, value in ours.items() if seed in base]
    if len(pairs) < 2:
        return len(pairs), math.nan
    from scipy import stats

    differences = [x - y for x, y in pairs]
    if max(differences) - min(differences) <= 1e-12 * max(1.0, abs(differences[0])):
        return len(pairs), 1.0 if differences[0] == 0 else 0.0
    a, b = zip(*pairs)
    return len(pairs), float(stats.ttest_rel(a, b).pvalue)


def label(key: tuple[str, ...]) -> str:
    return " ".join(key) or "(no overrides)"


def summarise(runs: list[Run], metrics: list[str], sort: str | None = None,
              baseline: str | None = None) -> list[dict[str, Any]]:
    """One row per group: its overrides, n, seeds and for each metric mean, std, ci95 (and
    ``p_<metric>``, the paired test against the baseline group), sorted best first by
    ``sort`` (default: the first metric)."""
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
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = {"group": label(key), "n": len(members),
                               "seeds": sorted((r.seed for r in members),
                                               key=lambda x: (not isinstance(x, int), str(x))),
                               "runs": [r.path for r in members]}
        for metric in metrics:
            values = [r.metrics[metric] for r in members if metric in r.metrics]
            mean, std, ci = mean_std_ci(values) if values else (math.nan,) * 3
            row[metric] = {"mean": mean, "std": std, "ci95": ci, "n": len(values)}
            if base_key is not None and key != base_key:
                row[metric]["pairs"], row[metric]["p"] = paired_test(members, groups[base_key],
                                                                     metric)
        row["baseline"] = key == base_key
        rows.append(row)
    sort = sort or (metrics[0] if metrics else None)
    if sort:
        if sort not in metrics:
            raise UserError(f"--sort {sort}: not one of the metrics shown ({', '.join(metrics)})")
        sign = 1 if lower_is_better(sort) else -1
        rows.sort(key=lambda r: (math.isnan(r[sort]["mean"]), sign * r[sort]["mean"]
                                 if not math.isnan(r[sort]["mean"]) else 0))
    return rows


# -- output ---------------------------------------------------------------------------------------
def cell(stats: dict[str, Any]) -> str:
    if math.isnan(stats["mean"]):
        return "–"
    text = f"{stats['mean']:.4f}"
    if not math.isnan(stats["std"]):
        text += f" ± {stats['std']:.4f} [±{stats['ci95']:.4f}]"
    if "p" in stats and not math.isnan(stats["p"]):
        text += f" p={stats['p']:.3g}"
    return text


def table(rows: list[dict[str, Any]], metrics: list[str], fmt: str) -> str:
    """The summary as text: ``markdown``, ``csv`` or ``json`` (``rich`` is printed by main)."""
    if fmt == "json":  # strict JSON: a value that cannot be computed is null
        return json.dumps(nan_to_none(rows), indent=1, allow_nan=False) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["group", "n", *[f"{m} {s}" for m in metrics
                                         for s in ("mean", "std", "ci95", "p")]])
        for r in rows:
            writer.writerow([r["group"], r["n"], *[r[m].get(s, "") for m in metrics
                                                    for s in ("mean", "std", "ci95", "p")]])
        return out.getvalue()
    lines = ["| group | n | " + " | ".join(f"{m} (mean ± std [95% CI])" for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for r in rows:
        name = r["group"] + (" (baseline)" if r["baseline"] else "")
        lines.append(f"| {name} | {r['n']} | " + " | ".join(cell(r[m]) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value


def print_rich(rows: list[dict[str, Any]], metrics: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="runs grouped by their overrides, over seeds")
    out.add_column("group", overflow="fold")
    out.add_column("n", justify="right")
    for metric in metrics:
        out.add_column(f"{metric}\nmean ± std [95% CI]", justify="right")
    for r in rows:
        name = r["group"] + (" (baseline)" if r["baseline"] else "")
        out.add_row(name, str(r["n"]), *[cell(r[m]) for m in metrics])
    Console().print(out)


def plot(runs: list[Run], rows: list[dict[str, Any]], metrics: list[str], out_dir: Path,
         curve: str | None) -> list[Path]:
    """PNGs: per metric, a bar per group with its 95 % interval; and learning curves of
    ``curve`` (default: the validation counterpart of the first metric), mean per group."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from lmvision.files import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        path = out_dir / name
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
        written.append(path)

    names = [r["group"] for r in rows]
    for metric in metrics:
        fig = Figure(figsize=(2 + 1.3 * len(rows), 4))
        ax = fig.add_subplot()
        means = [r[metric]["mean"] for r in rows]
        errors = [0.0 if math.isnan(r[metric]["ci95"]) else r[metric]["ci95"] for r in rows]
        ax.bar(range(len(rows)), means, yerr=errors, capsize=4)
        ax.set_xticks(range(len(rows)), [n[:40] for n in names], rotation=25, ha="right",
                      fontsize=7)
        ax.set_ylabel(f"{metric} (mean, 95% CI)")
        fig.tight_layout()
        save(fig, f"bar_{metric.replace('/', '_')}.png")
    curve = curve or next((m.replace("test/", "val/", 1) for m in metrics
                           if m.startswith("test/")), None)
    if curve and any(curve in r.curves for r in runs):
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for key, members in group_runs(runs).items():
            by_epoch: dict[int, list[float]] = {}
            for run in members:
                for epoch, value in run.curves.get(curve, []):
                    by_epoch.setdefault(epoch, []).append(value)
            if by_epoch:
                epochs = sorted(by_epoch)
                ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs],
                        marker="o", label=f"{label(key)[:50]} (n={len(members)})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{curve} (mean over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, f"curves_{curve.replace('/', '_')}.png")
    return written


# -- command line ---------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lmvision-compare", description="Compare runs and sweeps across seeds.")
    parser.add_argument("paths", nargs="*", help="run or sweep directories, or globs")
    parser.add_argument("--metric", "-m", action="append", dest="metrics",
                        help="a metric to show (repeat; default: the test metric the runs "
                             "select on, and the selection metric)")
    parser.add_argument("--sort", help="the metric to sort by (default: the first)")
    parser.add_argument("--baseline", help="the baseline group's overrides, space-separated "
                                           "(all of them, or enough to pick one group): every "
                                           "other group gets a paired t-test against it")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="rich in a terminal, markdown otherwise (default)")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG charts to DIR")
    parser.add_argument("--curve", help="the per-epoch metric of the learning curves")
    parser.add_argument("--ignore", action="append", default=[],
                        help="another override key that does not make a group (repeat)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT",
                        help="read runs from a W&B project instead of directories")
    args = parser.parse_args(argv)
    if not args.paths and not args.wandb:
        parser.error("give run or sweep directories (or --wandb ENTITY/PROJECT)")
    return args


def compare(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    ignore = IGNORED + tuple(args.ignore)
    runs, unfinished = wandb_runs(args.wandb, ignore) if args.wandb else \
        find_runs(args.paths, ignore)
    if not runs:
        raise UserError("no completed runs under " + (args.wandb or ", ".join(args.paths)) +
                        (f" ({unfinished} not completed)" if unfinished else ""))
    metrics = args.metrics or default_metrics(runs)
    missing = [m for m in metrics if not any(m in r.metrics for r in runs)]
    if missing:
        known = sorted({k for r in runs for k in r.metrics})
        raise UserError(f"--metric {missing[0]}: no run has it; known: {', '.join(known)}")
    rows = summarise(runs, metrics, args.sort, args.baseline)
    fmt = args.format or ("rich" if sys.stdout.isatty() else "markdown")
    if fmt == "rich":
        print_rich(rows, metrics)
    else:
        sys.stdout.write(table(rows, metrics, fmt))
    notes = []
    if unfinished:
        notes.append(f"{unfinished} run(s) not completed (running or failed) are left out")
    small = [r["group"] for r in rows if r["n"] < 3]
    if small:
        notes.append(f"{len(small)} group(s) with fewer than 3 seeds: their spread and interval "
                     "say little")
    for note in notes:
        print(f"lmvision-compare: warning: {note}", file=sys.stderr)
    if args.plot:
        for path in plot(runs, rows, metrics, args.plot, args.curve):
            print(f"wrote {path}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> None:
    from lmvision.run.cli import exit_with_error

    try:
        compare(argv)
    except UserError as e:
        exit_with_error(str(e))


if __name__ == "__main__":
    main()
