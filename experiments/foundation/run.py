"""Measure the foundation's promises on this machine and write the results into README.md.

    .venv/bin/python experiments/foundation/run.py                 # everything, seeds 0 1 2
    .venv/bin/python experiments/foundation/run.py --seeds 0 --write-readme

What it measures (each by running the real commands a user types):
  1. `python -m lmvision.train` (shapes, image_classifier, small_cnn, W&B offline): test/acc and
     the training wall time (`fit_seconds` in run.json) per seed;
  2. `python -m lmvision.train data=digits`: test/acc per seed;
  3. `python -m lmvision.train --help`: wall time (median of 5);
  4. shapes generation on one core: images per second (best of 3 renders of 20,000 images).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import studies  # noqa: E402  (experiments/studies.py)
from studies import mean_std  # noqa: E402

README = HERE / "README.md"
TARGETS = {"default_acc": 0.95, "default_fit_s": 30.0, "digits_acc": 0.97, "help_s": 2.0,
           "shapes_per_s": 5000.0}


def train(args: list[str], run_dir: Path) -> dict:
    r = studies.train(args, run_dir)
    return {"acc": r["test/acc"], "f1": r["test/f1_macro"], "fit_s": r["fit_seconds"],
            "wall_s": r["wall_time_s"], "last_lines": r["last_lines"]}


def help_seconds(repeats: int = 5) -> float:
    return studies.median_seconds(lambda: subprocess.run(
        [sys.executable, "-m", "lmvision.train", "--help"], capture_output=True, check=True),
        repeats)


def shapes_per_second(n: int = 20000) -> float:
    code = (
        "import os, time\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core\n"
        "from lmvision.data.shapes import render_shapes\n"
        "best = 0.0\n"
        "for _ in range(3):\n"
        "    t = time.perf_counter(); render_shapes(%d, 32, 0); dt = time.perf_counter() - t\n"
        "    best = max(best, %d / dt)\n"
        "print(best)\n" % (n, n)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--write-readme", action="store_true", help="rewrite the results in README.md")
    args = parser.parse_args()

    rows, checks = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        default = [train(["seed=%d" % s], Path(tmp) / f"default{s}") for s in args.seeds]
        digits = [train(["data=digits", "seed=%d" % s], Path(tmp) / f"digits{s}") for s in args.seeds]
    help_s = help_seconds()
    shapes_s = shapes_per_second()

    for name, runs in (("default (shapes, small_cnn)", default), ("data=digits", digits)):
        for seed, r in zip(args.seeds, runs):
            rows.append(f"| {name} | {seed} | {r['acc']:.4f} | {r['f1']:.4f} | {r['fit_s']:.1f} | {r['wall_s']:.1f} |")
    checks["default test/acc ≥ 0.95 (every seed)"] = min(r["acc"] for r in default) >= TARGETS["default_acc"]
    checks["default training ≤ 30 s (every seed)"] = max(r["fit_s"] for r in default) <= TARGETS["default_fit_s"]
    checks["digits test/acc ≥ 0.97 (every seed)"] = min(r["acc"] for r in digits) >= TARGETS["digits_acc"]
    checks["--help ≤ 2 s"] = help_s <= TARGETS["help_s"]
    checks["shapes ≥ 5,000 images/s on one core"] = shapes_s >= TARGETS["shapes_per_s"]

    lines = [
        f"{studies.environment_line()} Command: "
        f"`python experiments/foundation/run.py --seeds {' '.join(map(str, args.seeds))} --write-readme`.",
        "",
        "| run | seed | test/acc | test/f1_macro | training s (`fit_seconds`) | whole run s |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"- default test/acc over seeds: {mean_std([r['acc'] for r in default])}; "
        f"digits test/acc: {mean_std([r['acc'] for r in digits])}",
        f"- `python -m lmvision.train --help`: {help_s:.2f} s (median of 5)",
        f"- shapes generation, one core, 32 px: {shapes_s:,.0f} images/s (best of 3 × 20,000)",
        f"- last lines of the default run: `{default[0]['last_lines'][0]}` / `{default[0]['last_lines'][1]}`",
        "",
        *[f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks.items()],
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        studies.write_results(README, text)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
