"""Pixel-LM study: does a language model trained on pixels alone learn to recognise, and does
it draw what it is asked to? Writes README.md's results and copies the sample grids beside it.

    .venv/bin/python experiments/pixel_lm/run.py --write-readme      # ~35 min on 2 CPU cores
    .venv/bin/python experiments/pixel_lm/run.py --digits-seeds 0 1 2 --write-readme   # ~60 min
    .venv/bin/python experiments/pixel_lm/run.py --smoke   # the script alone: tiny runs, no files

Runs (`python -m lmvision.train`, CSV logger), for each seed:

* digits (8x8 scans, 64 pixel tokens, 16 greys): `experiment=pixel_lm_digits` (pretraining,
  then the linear probes of every block beside raw pixels and random weights); the same
  fine-tuned from its last checkpoint (`strategy=pixel_lm_finetune init_from=...`); the CNN
  baseline `strategy=image_classifier` on the same 8x8 images;
* shapes (16x16, 256 pixel tokens, 16 colours, target `shape`, distinct colours, no sensor
  noise): a judge
  `strategy=image_classifier` on the same images, then `experiment=pixel_lm_shapes`
  (class- and caption-conditioned) scored by it (`gen/acc`, `gen/acc_caption`), with its
  probes; the judge's own test accuracy is the CNN baseline.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from lmvision.files import write_json
from lmvision.evaluation.probes import FOLDS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import studies  # noqa: E402  (experiments/studies.py)
from studies import mean_std  # noqa: E402

DIGITS = ["data=digits", "data.image_size=8", "logger=csv"]
SHAPES = ["data.image_size=16", "data.colors=distinct", "data.num_images=8000", "data.noise=0",
          "logger=csv"]
FINETUNE_EPOCHS = 30
# --smoke: every run real but tiny, to check the script itself (a few batches, a small model)
SMOKE = ["debug=limit"]
SMOKE_LM = ["strategy.net.dim=32", "strategy.net.depth=2", "strategy.net.heads=2"]
SMOKE_EXTRAS = ["evaluation.samples.images=4", "evaluation.generation.samples_per_class=2"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--digits-seeds", type=int, nargs="+", default=None,
                        help="seeds of the digits runs alone (default: --seeds); each seed also "
                             "draws its own split of the 1,797 scans")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script: each run a few batches of a small model "
                             "(debug=limit, 300 shapes images), run in this process; prints its "
                             "tables, writes nothing")
    args = parser.parse_args()
    if args.smoke and args.write_readme:
        parser.error("--smoke checks the script; its figures are not for the README")
    digits_seeds = args.digits_seeds or args.seeds
    studies.IN_PROCESS = args.smoke
    smoke, smoke_lm = (SMOKE, SMOKE_LM) if args.smoke else ([], [])
    extras = SMOKE_EXTRAS if args.smoke else []  # of pretraining's evaluation callbacks
    finetune_epochs = 1 if args.smoke else FINETUNE_EPOCHS
    images = ["data.num_images=300"] if args.smoke else []  # the shapes runs' (the last wins)

    results: dict[str, list[dict]] = {}
    sampling = ""  # the shapes run's own sampling settings (its config)
    where = studies.environment_line()  # before the sample grids are copied beside the README
    with tempfile.TemporaryDirectory() as tmp:
        def run(name: str, seed: int, overrides: list[str]) -> Path:
            run_dir = Path(tmp) / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}-{seed}"
            r = studies.train([*overrides, *smoke, f"seed={seed}"], run_dir)
            results.setdefault(name, []).append(r)
            shown = {k: round(v, 4) for k, v in r.items()
                     if k.split("/")[0] in ("test", "probe", "gen") and "loss" not in k}
            print(f"{name:28s} seed {seed}: {shown} ({r['fit_seconds']:.0f} s)", flush=True)
            return run_dir

        def keep_grids(run_dir: Path, data: str) -> None:  # the first seed's, beside the README
            if args.write_readme:
                for png in (run_dir / "figures").glob("samples_*.png"):
                    shutil.copy(png, HERE / f"{data}_{png.name}")

        for seed in digits_seeds:
            pre = run("digits pretrain", seed, ["experiment=pixel_lm_digits", *smoke_lm, *extras])
            run("digits finetune", seed, ["experiment=pixel_lm_digits",
                                           "strategy=pixel_lm_finetune",
                                           f"init_from={pre / 'checkpoints' / 'last.ckpt'}",
                                           f"trainer.max_epochs={finetune_epochs}", *smoke_lm])
            run("digits CNN", seed, [*DIGITS, "strategy=image_classifier"])
            if seed == digits_seeds[0]:
                keep_grids(pre, "digits")
        for seed in args.seeds:
            judge = run("shapes CNN (judge)", seed, [*SHAPES, *images, "strategy=image_classifier"])
            lm = run("shapes pretrain", seed, [
                "experiment=pixel_lm_shapes", *images, *smoke_lm, *extras,
                f"evaluation.generation.judge={judge / 'checkpoints' / 'last.ckpt'}"])
            sampling = studies.sampling_settings(lm)
            if seed == args.seeds[0]:
                keep_grids(lm, "shapes")

    def col(name, key, places=4):
        values = [r[key] for r in results[name] if key in r]
        return mean_std(values, digits=places) if values else "—"

    def mean(name, key):
        values = [r[key] for r in results[name]]
        return sum(values) / len(values)

    rows = []
    for data in ("digits", "shapes"):
        cnn = f"{data} CNN" if data == "digits" else "shapes CNN (judge)"
        pre = f"{data} pretrain"
        rows.append(f"| {data} | {col(pre, 'probe/acc_best')} (block "
                    f"{col(pre, 'probe/best_layer', 0)}) | {col(pre, 'probe/acc_all_layers')} | "
                    f"{col(pre, 'probe/acc_random_init')} | "
                    f"{col(pre, 'probe/acc_random_init_all_layers')} | {col(pre, 'probe/acc_pixels')} | "
                    f"{col('digits finetune', 'test/acc') if data == 'digits' else '—'} | "
                    f"{col(cnn, 'test/acc')} | {col(pre, 'test/bits_per_dim', 3)} |")
    layers = sorted(k for k in results["digits pretrain"][0] if k.startswith("probe/acc_layer_"))
    by_layer = [f"| {data} | " + " | ".join(col(f"{data} pretrain", k) for k in layers) + " |"
                for data in ("digits", "shapes")]
    checks = {}
    gap = 100 * (mean("shapes pretrain", "probe/acc_best")
                 - mean("shapes pretrain", "probe/acc_random_init"))
    checks[f"shapes: probe/acc_best − probe/acc_random_init ≥ 10 points ({gap:+.1f})"] = gap >= 10
    gen = mean("shapes pretrain", "gen/acc")
    checks[f"shapes: class-conditioned gen/acc ≥ 0.8 ({gen:.4f}; caption-conditioned "
           f"{mean('shapes pretrain', 'gen/acc_caption'):.4f})"] = gen >= 0.8
    best, pixels = mean("digits pretrain", "probe/acc_best"), mean("digits pretrain", "probe/acc_pixels")
    checks[f"digits: probe/acc_best {best:.4f} ≥ probe/acc_pixels {pixels:.4f}"] = best >= pixels
    tuned = mean("digits finetune", "test/acc")
    checks[f"digits: fine-tuned test/acc {tuned:.4f} ≥ 0.95"] = tuned >= 0.95
    shapes, digits = (" ".join(map(str, s)) for s in (args.seeds, digits_seeds))
    seeds, command = shapes, f"--seeds {shapes}"
    if digits != shapes:
        seeds, command = f"{digits} (digits), {shapes} (shapes)", f"{command} --digits-seeds {digits}"
    per_seed = [f"seed {seed}: {r['probe/acc_best']:.4f} (block {r['probe/best_layer']:.0f}), "
                f"all blocks {r['probe/acc_all_layers']:.4f}, against pixels "
                f"{r['probe/acc_pixels']:.4f} (cross-validated: {r['probe/cv_acc_best']:.4f} "
                f"against {r['probe/cv_acc_pixels']:.4f})"
                for seed, r in zip(digits_seeds, results["digits pretrain"])]
    lines = [
        f"{where} Seeds {seeds}. Command: `python experiments/pixel_lm/run.py "
        f"{command} --write-readme`.", "",
        "| data | probe, pretrained (block chosen by CV) | probe, pretrained, all blocks "
        "| probe, random init | probe, random init, all blocks | probe, raw pixels "
        "| fine-tuned | CNN | test bits/dim |", "|---|---|---|---|---|---|---|---|---|", *rows, "",
        f"Beside the issue's checks below: the digits probe of all blocks side by side "
        f"{mean('digits pretrain', 'probe/acc_all_layers'):.4f} against the pixels' "
        f"{pixels:.4f}.", "",
        f"Cross-validated accuracy of the chosen probes ({FOLDS} folds over the training and "
        "validation items, the score that chose the block and the strength; no test item read): "
        + "; ".join(f"{data}: pretrained {col(f'{data} pretrain', 'probe/cv_acc_best')}, raw "
                    f"pixels {col(f'{data} pretrain', 'probe/cv_acc_pixels')}, random init "
                    f"{col(f'{data} pretrain', 'probe/cv_acc_random_init')}"
                    for data in ("digits", "shapes")) + ".", "",
        "Probe test accuracy by block (pretrained):", "",
        "| data | " + " | ".join(k.split("_")[-1] for k in layers) + " |",
        "|---|" + "---|" * len(layers), *by_layer, "",
        *([f"Digits probe by seed (each seed draws its own split): {'; '.join(per_seed)}.", ""]
          if len(per_seed) > 1 else []),
        f"Generation on shapes (`target=shape`, judged by the CNN above; sampled at "
        f"{sampling}): class-conditioned "
        f"gen/acc {col('shapes pretrain', 'gen/acc')}, caption-conditioned "
        f"{col('shapes pretrain', 'gen/acc_caption')}. Sample grids of the first seed's last "
        "epoch: `shapes_samples_*.png`, `digits_samples_*.png` beside this README.", "",
        *[f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks.items()],
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        studies.write_results(HERE / "README.md", text)
        write_json(HERE / "results.json", {k: [{m: v for m, v in r.items() if m != "last_lines"}
                                              for r in runs] for k, runs in results.items()})
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
