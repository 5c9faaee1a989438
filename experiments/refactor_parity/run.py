"""Do two checkouts of lmvision train the same models? Same records, same metrics, to the bit.

    .venv/bin/python experiments/refactor_parity/run.py --before /tmp/lmv-before --write-readme

A refactor promises that behaviour, records and metrics stay the same. This script trains
``image_classifier``, ``aux_text`` and ``pixel_lm`` (pretraining, then fine-tuning from it) at a
fixed seed on the CPU, once with the code of ``--before`` (another checkout: its ``src/`` goes
first on ``PYTHONPATH``, and its own ``conf/`` is used) and once with this checkout, one thread
each (so that float sums are added in the same order), and compares ``metrics.json`` key by key
and the keys of ``run.json``. It exits non-zero when a metric differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
import studies  # noqa: E402  (experiments/studies.py)

README = HERE / "README.md"
COMMON = ["logger=csv", "seed=0", "callbacks.progress_bar.refresh_rate=0"]
RUNS = {
    "image_classifier": ["data.num_images=1200", "trainer.max_epochs=3"],
    "aux_text": ["experiment=aux_text_shapes", "data.num_images=1200", "trainer.max_epochs=3"],
    "pixel_lm_pretrain": ["experiment=pixel_lm_digits", "trainer.max_epochs=3"],
}
FINETUNE = ["experiment=pixel_lm_digits", "trainer.max_epochs=2"]
# the same settings, named as each side's configs name them (the refactor moved pixel_lm's
# sampling and probe options to evaluation=, and its fine-tune stage to its own strategy)
SIDE = {
    "before": {"pixel_lm_pretrain": ["strategy.samples=4", "strategy.probe_max_train=400"],
               "pixel_lm_finetune": ["strategy.stage=finetune", "strategy.samples=0",
                                     "strategy.probe=false"]},
    "after": {"pixel_lm_pretrain": ["evaluation.samples.images=4",
                                    "evaluation.probe.max_train=400"],
              "pixel_lm_finetune": ["strategy=pixel_lm_finetune"]},
}
# run.json fields that differ between any two runs (times, places, versions of the code)
VOLATILE = {"started_at", "ended_at", "wall_time_s", "fit_seconds", "run_dir", "command", "git",
            "checkpoints", "tested_checkpoint", "device", "wandb", "init_from", "packages"}


def train(src: Path | None, overrides: list[str], run_dir: Path) -> tuple[dict, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    if src is not None:
        env["PYTHONPATH"] = f"{src / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-m", "lmvision.train", *COMMON, *overrides, f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src or ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return (json.loads((run_dir / "metrics.json").read_text()),
            json.loads((run_dir / "run.json").read_text()))


def train_all(src: Path | None, where: Path, side: str) -> dict[str, tuple[dict, dict]]:
    out = {}
    for name, overrides in RUNS.items():
        out[name] = train(src, [*overrides, *SIDE[side].get(name, [])], where / name)
        print(f"  {name}: {len(out[name][0])} metrics", flush=True)
    pretrained = where / "pixel_lm_pretrain" / "checkpoints" / "last.ckpt"
    out["pixel_lm_finetune"] = train(src, [*FINETUNE, *SIDE[side]["pixel_lm_finetune"],
                                           f"init_from={pretrained}"],
                                     where / "pixel_lm_finetune")
    print(f"  pixel_lm_finetune: {len(out['pixel_lm_finetune'][0])} metrics", flush=True)
    return out


def compare(before: dict, after: dict) -> tuple[list[str], bool]:
    lines, same = [], True
    lines.append("| run | metrics compared | equal | differing | only before | only after |")
    lines.append("|---|---|---|---|---|---|")
    details = []
    for name in before:
        (m0, r0), (m1, r1) = before[name], after[name]
        common = sorted(set(m0) & set(m1))
        differ = [k for k in common if m0[k] != m1[k]]
        only0, only1 = sorted(set(m0) - set(m1)), sorted(set(m1) - set(m0))
        same &= not differ and not only0
        lines.append(f"| {name} | {len(common)} | {len(common) - len(differ)} | {len(differ)} | "
                     f"{len(only0)} | {len(only1)} |")
        for k in differ:
            details.append(f"- {name} `{k}`: {m0[k]!r} before, {m1[k]!r} after")
        for k in only0:
            details.append(f"- {name} `{k}`: only before ({m0[k]!r})")
        for k in only1:
            details.append(f"- {name} `{k}`: only after ({m1[k]!r})")
        k0, k1 = set(r0) - VOLATILE, set(r1) - VOLATILE
        if k0 - k1:
            same = False
            details.append(f"- {name} run.json: keys only before: {', '.join(sorted(k0 - k1))}")
        if k1 - k0:
            details.append(f"- {name} run.json: new keys: {', '.join(sorted(k1 - k0))}")
        for key in sorted(k0 & k1):
            if r0[key] != r1[key]:
                details.append(f"- {name} run.json `{key}`: {json.dumps(r0[key])[:120]} before, "
                               f"{json.dumps(r1[key])[:120]} after")
    return lines + [""] + (details or ["- no differences"]), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the old code")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    before_commit = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short=10",
                                    "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"before ({args.before}, {before_commit}):", flush=True)
        before = train_all(args.before.resolve(), Path(tmp) / "before", "before")
        print("after (this checkout):", flush=True)
        after = train_all(None, Path(tmp) / "after", "after")
    lines, same = compare(before, after)
    text = "\n".join([studies.environment_line(), "",
                      f"Before: commit {before_commit}. After: this checkout.", "", *lines, "",
                      f"- {'PASS' if same else 'FAIL'}: every metric of every run is the same"])
    print(text)
    if args.write_readme:
        studies.write_results(README, text)
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
