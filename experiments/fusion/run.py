"""Fusion study: does side text help, and which fusion helps most? Writes README.md's results.

    .venv/bin/python experiments/fusion/run.py --write-readme          # seeds 0 1 2, ~25 min on 2 cores
    .venv/bin/python experiments/fusion/run.py --seeds 0 --fusions concat   # a quick look

Every run is `python -m lmvision.train experiment=fusion_shapes ...` (shapes, target
color_shape, small_cnn image encoder, frozen packaged MiniLM text encoder, CSV logger):
  * strategy.net.mode=image_only and strategy.net.mode=text_only (the unimodal baselines);
  * strategy.net.mode=fused with each fusion module, without modality dropout;
  * the same with strategy.net.modality_dropout=P (default 0.5), for test/acc_no_text.
Time per epoch is `fit_seconds` (run.json) divided by the number of epochs (training and
validation, the one-time text-feature cache included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from lmvision.files import write_json

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import studies  # noqa: E402  (experiments/studies.py)
from studies import mean_std  # noqa: E402

FUSIONS = ("concat", "gated", "cross_attention", "film")
EPOCHS = 8  # conf/trainer/default.yaml


def configurations(fusions: list[str], dropout: float) -> list[tuple[str, list[str]]]:
    configs = [("image_only", ["strategy.net.mode=image_only"]),
               ("text_only", ["strategy.net.mode=text_only"])]
    configs += [(f"fused: {f}", ["strategy.net.mode=fused", f"fusion={f}"]) for f in fusions]
    configs += [(f"fused: {f} + modality dropout {dropout}",
                 ["strategy.net.mode=fused", f"fusion={f}",
                  f"strategy.net.modality_dropout={dropout}"])
                for f in fusions]
    return configs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fusions", nargs="+", default=list(FUSIONS), choices=FUSIONS)
    parser.add_argument("--dropout", type=float, default=0.5, help="modality dropout of the last runs")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in configurations(args.fusions, args.dropout):
            results[name] = []
            for seed in args.seeds:
                run_dir = Path(tmp) / f"{name.replace(' ', '_').replace(':', '')}-{seed}"
                r = studies.train(["experiment=fusion_shapes", "logger=csv", f"seed={seed}",
                                   f"trainer.max_epochs={EPOCHS}", *overrides], run_dir)
                r["seconds_per_epoch"] = r["fit_seconds"] / EPOCHS
                results[name].append(r)
                print(f"{name:45s} seed {seed}: test/acc={r['test/acc']:.4f} "
                      f"acc_no_text={r['test/acc_no_text']:.4f} {r['seconds_per_epoch']:.1f} s/epoch",
                      flush=True)

    def mean(name, key):
        return statistics.mean(r[key] for r in results[name])

    rows = [f"| {name} | {mean_std([r['test/acc'] for r in runs])} | "
            f"{mean_std([r['test/f1_macro'] for r in runs])} | "
            f"{mean_std([r['test/acc_no_text'] for r in runs])} | "
            f"{mean_std([r['seconds_per_epoch'] for r in runs], digits=2)} |"
            for name, runs in results.items()]
    unimodal = max(mean("image_only", "test/acc"), mean("text_only", "test/acc"))
    plain = [f"fused: {f}" for f in args.fusions]
    best = max(plain, key=lambda n: mean(n, "test/acc"))
    image_acc = mean("image_only", "test/acc")
    epoch_ratio = {f: mean(f"fused: {f}", "seconds_per_epoch") / mean("image_only", "seconds_per_epoch")
                   for f in args.fusions}
    checks = {
        f"best fusion ({best}) beats max(image_only, text_only) by ≥ 10 points "
        f"({100 * (mean(best, 'test/acc') - unimodal):+.1f})": mean(best, "test/acc") - unimodal >= 0.10,
        "every fusion module beats both unimodal baselines":
            all(mean(n, "test/acc") > unimodal for n in plain),
    }
    for f in args.fusions:
        no_text = mean(f"fused: {f} + modality dropout {args.dropout}", "test/acc_no_text")
        checks[f"{f} with modality dropout: test/acc_no_text {no_text:.4f} ≥ image_only "
               f"{image_acc:.4f} − 0.02"] = no_text >= image_acc - 0.02
    for f, ratio in epoch_ratio.items():
        checks[f"{f}: epoch time {ratio:.2f}× image_only (≤ 1.5×)"] = ratio <= 1.5

    seeds = " ".join(map(str, args.seeds))
    lines = [
        f"{studies.environment_line()} Seeds {seeds}, {EPOCHS} epochs each. Command: "
        f"`python experiments/fusion/run.py --seeds {seeds} --write-readme`.",
        "",
        "| run (experiment=fusion_shapes) | test/acc | test/f1_macro | test/acc_no_text | s / epoch |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *[f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks.items()],
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        studies.write_results(HERE / "README.md", text)
        raw = {name: [{k: v for k, v in r.items() if k != "last_lines"} for r in runs]
               for name, runs in results.items()}
        write_json(HERE / "results.json", raw)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
