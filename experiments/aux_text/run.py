"""Auxiliary-text study: do class descriptions help, beyond class names and random words, for
unseen classes and with few images? Writes README.md's results.

    .venv/bin/python experiments/aux_text/run.py --write-readme      # seeds 0 1 2, ~20 min on 2 cores
    .venv/bin/python experiments/aux_text/run.py --seeds 0 --shots 1  # a quick look

Every run is `python -m lmvision.train` with the CSV logger on shapes, target color_shape,
data.colors=distinct, small_cnn image encoder, frozen packaged MiniLM text encoder:

* **description banks** (`experiment=aux_text_shapes`: a seeded quarter of the 24 colour-shape
  classes held out of training): `descriptions=file` (the shipped bank), `class_name` (prompt
  templates only) and `random_words` (the class name and random letters, as many words and as
  long as the real descriptions), and the file bank once more with the strategy's default
  learned temperature instead of the experiment's fixed one; test/acc_seen, test/acc_unseen (generalized: predicting among
  all 24 classes), their harmonic mean, and test/acc_unseen_zsl (among the unseen only);
* **few-shot curves** (no holdout): `data.shots_per_class` = 1, 5, 20 and all, `strategy=aux_text`
  (the same experiment, `data.holdout_classes=null`) against `strategy=image_classifier` on the
  same images (the same seed draws the same shots). Few-shot runs train for max(8 epochs,
  150 steps), batches of at most 128 images; the full data trains 8 epochs.

Runs go two at a time, one thread each.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmvision.files import write_json

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import studies  # noqa: E402  (experiments/studies.py)
from studies import mean_std  # noqa: E402

BANKS = ("file", "class_name", "random_words")
# the experiment fixes the temperature; this row shows what the strategy's default (learned) does
LEARNED = ["strategy.net.learn_temperature=true", "strategy.net.init_temperature=0.07"]
SHOTS = ("1", "5", "20", "all")
CLASSES, EPOCHS, MIN_STEPS, BATCH = 24, 8, 150, 128
DATA = ["data.target=color_shape", "data.colors=distinct", "logger=csv"]
STRATEGIES = {"aux_text": ["experiment=aux_text_shapes", "data.holdout_classes=null"],
              "image_classifier": ["strategy=image_classifier"]}


def few_shot_budget(shots: str) -> list[str]:
    if shots == "all":
        return [f"trainer.max_epochs={EPOCHS}"]
    images = int(shots) * CLASSES
    batch = min(BATCH, images)
    epochs = max(EPOCHS, math.ceil(MIN_STEPS / math.ceil(images / batch)))
    every = max(1, epochs // EPOCHS)  # about 8 validations and last.ckpt saves per run
    return [f"data.shots_per_class={shots}", f"data.batch_size={batch}",
            f"trainer.max_epochs={epochs}", f"trainer.check_val_every_n_epoch={every}",
            f"+callbacks.last_checkpoint.every_n_epochs={every}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--banks", nargs="+", default=list(BANKS), choices=BANKS)
    parser.add_argument("--shots", nargs="+", default=list(SHOTS), choices=SHOTS)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()

    jobs = [(("bank", bank), seed, ["experiment=aux_text_shapes", *DATA, f"descriptions={bank}",
                                    f"trainer.max_epochs={EPOCHS}"])
            for bank in args.banks for seed in args.seeds]
    if "file" in args.banks:
        jobs += [(("bank", "file, learned temperature"), seed,
                  ["experiment=aux_text_shapes", *DATA, "descriptions=file", *LEARNED,
                   f"trainer.max_epochs={EPOCHS}"]) for seed in args.seeds]
    jobs += [(("shots", shots, strategy), seed, [*overrides, *DATA, *few_shot_budget(shots)])
             for shots in args.shots for strategy, overrides in STRATEGIES.items()
             for seed in args.seeds]
    results: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        def run(job):
            key, seed, overrides = job
            name = re.sub(r"[^A-Za-z0-9]+", "_", "-".join(key))
            run_dir = Path(tmp) / f"{name}-{seed}"
            r = studies.train([*overrides, f"seed={seed}"], run_dir, env={"OMP_NUM_THREADS": "1"})
            shown = {k: round(v, 4) for k, v in r.items() if k.startswith("test/acc")}
            print(f"{' '.join(key):32s} seed {seed}: {shown} ({r['fit_seconds']:.0f} s)", flush=True)
            return key, r

        with ThreadPoolExecutor(2) as pool:
            for key, r in pool.map(run, jobs):
                results.setdefault(key, []).append(r)

    def values(key, metric):
        return [r[metric] for r in results[key]]

    def mean(key, metric):
        return statistics.mean(values(key, metric))

    lines = [f"{studies.environment_line()} Seeds {' '.join(map(str, args.seeds))}. Command: "
             f"`python experiments/aux_text/run.py --seeds {' '.join(map(str, args.seeds))} "
             "--write-readme`.", ""]
    checks = {}
    if args.banks:
        lines += ["**Description banks** (`experiment=aux_text_shapes`, 6 of 24 classes unseen, "
                  f"{EPOCHS} epochs; mean ± std over seeds)", "",
                  "| descriptions | test/acc_seen | test/acc_unseen | test/acc_hm | "
                  "test/acc_unseen_zsl | test/acc |", "|---|---|---|---|---|---|"]
        for bank in [*args.banks] + (["file, learned temperature"] if "file" in args.banks else []):
            key = ("bank", bank)
            lines.append(f"| {bank} | " + " | ".join(
                mean_std(values(key, f"test/{m}")) for m in
                ("acc_seen", "acc_unseen", "acc_hm", "acc_unseen_zsl", "acc")) + " |")
        lines.append("")
        if "file" in args.banks:
            key = ("bank", "file")
            unseen, seen = mean(key, "test/acc_unseen"), mean(key, "test/acc_seen")
            checks[f"descriptions=file: test/acc_unseen {unseen:.4f} ≥ 0.5 (generalized, chance "
                   f"≈ 0.04)"] = unseen >= 0.5
            checks[f"descriptions=file: test/acc_seen {seen:.4f} ≥ 0.9"] = seen >= 0.9
    if args.shots:
        lines += ["**Few-shot** (no holdout; test/acc, mean ± std over seeds)", "",
                  "| shots per class | aux_text | image_classifier | difference (points) |",
                  "|---|---|---|---|"]
        for shots in args.shots:
            aux, image = ("shots", shots, "aux_text"), ("shots", shots, "image_classifier")
            gap = 100 * (mean(aux, "test/acc") - mean(image, "test/acc"))
            lines.append(f"| {shots} | {mean_std(values(aux, 'test/acc'))} | "
                         f"{mean_std(values(image, 'test/acc'))} | {gap:+.1f} |")
            if shots == "1":
                checks[f"1-shot: aux_text beats image_classifier by ≥ 10 points ({gap:+.1f})"] = gap >= 10
        lines.append("")
    lines += [f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks.items()]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        studies.write_results(HERE / "README.md", text)
        raw = {" ".join(key): [{k: v for k, v in r.items() if k != "last_lines"} for r in runs]
               for key, runs in results.items()}
        write_json(HERE / "results.json", raw)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
