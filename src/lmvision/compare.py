"""``lmvision-compare``: compare runs and sweeps across seeds from their run records.

    lmvision-compare multirun/2026-11-26/10-00-00 'outputs/**/digits-*' --metric test/acc
    lmvision-compare multirun/... --baseline strategy=image_classifier --format markdown
    lmvision-compare multirun/... --metric test/ece --sort test/ece --sort-mode min
    lmvision-compare multirun/... --plot figures/
    lmvision-compare --wandb my-team/lmvision --metric test/acc

Each run directory holds ``run.json`` (status, seed, command, the selection metric ``monitor``
and its ``monitor_mode``), ``metrics.json`` (final metrics), ``.hydra/overrides.yaml`` (what the
command changed; a run resumed in place adds ``.hydra/resume-<n>/overrides.yaml``, which update
the first key by key) and ``csv/metrics.csv`` (per epoch, with ``logger=csv``). Runs that differ
only in ``seed`` (and in where they write: ``hydra.*``, ``paths.*``, ``logger``, ``ckpt_path``)
form a group; for each group and metric the table gives n, mean ± std, a 95 % confidence
interval (Student's t) over seeds (a seed run more than once counts once, with its mean), and
with ``--baseline`` a paired t-test against the baseline group over the seeds both have (no p
where it cannot be computed, with a warning that says why).

Rows are sorted best first by ``--sort`` (default: the first metric). Which direction is better
is never guessed from a name: the runs' ``monitor_mode`` gives it for their ``monitor``,
``<monitor>_best`` and its test counterpart (``val/x`` -> ``test/x``); ``fit_seconds`` and
``wall_time_s`` are lower-is-better; for any other metric (or older records without
``monitor_mode``) give ``--sort-mode max|min``, which also overrides the runs'. Reads files
only (no torch), so it runs on records copied from a cluster. Reading, grouping and the
statistics live in :mod:`lmvision.run.comparison`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from lmvision.errors import UserError
from lmvision.run.comparison import (IGNORED, MODES, Run, find_runs, group_runs, label,
                                     summarise, wandb_runs)

__all__ = ["IGNORED", "Run", "compare", "default_metrics", "find_runs", "main", "plot",
           "summarise", "table", "wandb_runs"]
FORMATS = ("rich", "markdown", "csv", "json")


# -- what to show ---------------------------------------------------------------------------------
def default_metrics(runs: list[Run]) -> list[str]:
    """The test metric of what the runs select on (``monitor``, or for older records
    ``val/<metric>_best`` in their metrics: ``test/<metric>``) and ``<monitor>_best``."""
    names: list[str] = []
    for run in runs:
        monitors = [run.monitor] if run.monitor else \
            [k[:-len("_best")] for k in run.metrics if k.startswith("val/") and k.endswith("_best")]
        for monitor in monitors:
            if not monitor.startswith("val/"):
                continue
            for name in ("test/" + monitor[len("val/"):], monitor + "_best"):
                if name not in names and any(name in r.metrics for r in runs):
                    names.append(name)
    return names or sorted({k for r in runs for k in r.metrics if k.startswith("test/")})[:3]


# -- output ---------------------------------------------------------------------------------------
def cell(stats: dict[str, Any]) -> str:
    if math.isnan(stats["mean"]):
        return "–"
    text = f"{stats['mean']:.4f}"
    if not math.isnan(stats["std"]):
        text += f" ± {stats['std']:.4f} [±{stats['ci95']:.4f}]"
    if "p" in stats:  # not computable: a warning says why
        text += " p=n/a" if math.isnan(stats["p"]) else f" p={stats['p']:.3g}"
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
    parser.add_argument("--sort-mode", choices=MODES,
                        help="whether higher (max) or lower (min) --sort values are better: "
                             "needed for a metric other than the runs' selection metric "
                             "(monitor, with its monitor_mode) and durations; overrides theirs")
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
    rows = summarise(runs, metrics, args.sort, args.baseline, args.sort_mode)
    fmt = args.format or ("rich" if sys.stdout.isatty() else "markdown")
    if fmt == "rich":
        print_rich(rows, metrics)
    else:
        sys.stdout.write(table(rows, metrics, fmt))
    notes = []
    if unfinished:
        notes.append(f"{unfinished} run(s) not completed (running or failed) are left out")
    small = [r["group"] for r in rows if max((r[m]["n"] for m in metrics), default=r["n"]) < 3]
    if small:
        notes.append(f"{len(small)} group(s) with fewer than 3 seeds: their spread and interval "
                     "say little")
    notes += [f"p of {m} not computable for {r['group']}: {r[m]['p_note']}"
              for r in rows for m in metrics if r[m].get("p_note")]
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
