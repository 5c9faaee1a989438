"""Pixel-LM study, shapes part, alone and with options: the same judge and experiment as
``run.py``, with more images, a larger model or longer training if asked. Writes the README's
section of its device (``gpu`` or ``cpu``).

    python experiments/pixel_lm/larger_shapes.py --write-readme      # give it 7 min on one H100
    python experiments/pixel_lm/larger_shapes.py --device cpu --dim 64 --depth 4 --heads 4 \
        --batch 32 --lr 0.003 --epochs 30 --max-minutes 60 --write-readme   # ~1 h, 2 cores

(One try on an H100 with a 2.5-minute cap did not finish training, testing, probes and gen/acc
within 5 minutes of the call: allow the training cap plus about 5 minutes.)

Runs (`python -m lmvision.train`, CSV logger; `--device gpu`: `trainer=gpu` in bf16-mixed,
`--device cpu`: `trainer=cpu` in float32):

* the judge, `strategy=image_classifier` on the shapes images of `run.py`, ``--num-images`` of
  them (its test accuracy is the CNN baseline);
* `experiment=pixel_lm_shapes` on the same images, with `strategy.net.dim/depth/heads`,
  `data.batch_size`, `optimizer.lr` and `trainer.max_epochs` from the options below, and a cap
  (`trainer.max_time`, so the run ends inside a lease; the checkpoint with the best
  `val/bits_per_dim` is then tested, probed and scored, as in every run), scored by the judge
  (`gen/acc`, `gen/acc_caption`).

``--out DIR`` also copies the results JSON and the sample grids there; ``--keep DIR`` keeps both
runs (checkpoints, logs, figures) there. ``--temperatures T ...`` and ``--guidance G ...`` also
score ``gen/acc`` of the tested checkpoint at each pair of a sampling temperature and a
classifier-free guidance weight (``lmvision-eval`` with the probes off; the run itself samples
at the experiment's settings, which its section names). ``--from-runs DIR`` takes the judge
and the pixel LM from an earlier ``--keep DIR`` instead of training them (given the same
options), e.g. to add temperatures to a finished run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from lmvision.files import write_json

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import studies  # noqa: E402  (experiments/studies.py)

SHAPES = ["data.image_size=16", "data.colors=distinct", "data.noise=0", "logger=csv"]
TRAINERS = {"gpu": ["trainer=gpu", "trainer.precision=bf16-mixed"], "cpu": ["trainer=cpu"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(TRAINERS), default="gpu")
    parser.add_argument("--num-images", type=int, default=8000, help="shapes images (all splits)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--max-minutes", type=float, default=2.0, help="cap on training time")
    parser.add_argument("--sample-every", type=int, default=5,
                        help="draw the sample grids every this many epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[],
                        help="also score gen/acc at these sampling temperatures")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0],
                        help="classifier-free guidance weights scored with each of --temperatures")
    parser.add_argument("--gen-samples-per-class", type=int, default=25,
                        help="class-conditioned samples per class of --temperatures (the run's "
                             "own gen/acc keeps the experiment's 25)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the judge's and the pixel LM's runs in this folder")
    parser.add_argument("--from-runs", type=Path, default=None,
                        help="the runs kept by an earlier --keep: test them, do not train")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script on a CPU: 300 images, 1 epoch, a small model, "
                             "the runs in this process")
    args = parser.parse_args()
    studies.IN_PROCESS = args.smoke
    if args.smoke:
        args.device, args.num_images = "cpu", 300
        args.dim, args.depth, args.heads, args.epochs = 32, 2, 2, 1
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    trainer, lm_data = TRAINERS[args.device], [f"data.num_images={args.num_images}"]
    shapes = [*SHAPES, *lm_data]
    seconds = int(args.max_minutes * 60)
    cap = f"00:00:{seconds // 60:02d}:{seconds % 60:02d}"
    lm_overrides = ["experiment=pixel_lm_shapes", "logger=csv", *trainer, *lm_data,
                    f"strategy.net.dim={args.dim}", f"strategy.net.depth={args.depth}",
                    f"strategy.net.heads={args.heads}",
                    f"data.batch_size={args.batch}", f"optimizer.lr={args.lr}",
                    f"trainer.max_epochs={args.epochs}", f"+trainer.max_time={cap}",
                    f"evaluation.samples.every_n_epochs={args.sample_every}",
                    f"seed={args.seed}"]
    where = studies.environment_line()  # before the sample grids are copied beside the README
    with tempfile.TemporaryDirectory() as tmp:
        root = args.from_runs or args.keep or Path(tmp)
        judge_dir, lm_dir = root / "judge", root / "lm"
        judge_ckpt = judge_dir / "checkpoints" / "last.ckpt"
        if args.from_runs:
            judge, lm = _kept(judge_dir, lm_dir, lm_overrides)
            trained = json.loads((lm_dir / "run.json").read_text()).get("git") or {}
            where += (f" The runs were trained at commit {str(trained.get('commit'))[:10]}"
                      f"{' (uncommitted changes)' if trained.get('dirty') else ''}, and tested "
                      f"again here from their folders (--from-runs).")
        else:
            # the judge reads no text: the scratch text encoder keeps it off the packaged MiniLM
            judge = studies.train([*shapes, "strategy=image_classifier", "text_encoder=scratch",
                                   *trainer, f"seed={args.seed}"], judge_dir)
            print(f"judge: test/acc {judge['test/acc']:.4f} ({judge['fit_seconds']:.0f} s)",
                  flush=True)
            print(f"pixel LM: training for up to {args.max_minutes:g} min, then testing, probes "
                  f"and gen/acc" + (f" (log: {args.out / 'pixel_lm_train.log'})" if args.out
                                    else ""), flush=True)
            lm = studies.train([*lm_overrides, f"evaluation.generation.judge={judge_ckpt}"],
                               lm_dir, log=args.out / "pixel_lm_train.log" if args.out else None)
        epochs = _epochs(lm_dir)
        tested = _tested_checkpoint(lm_dir)
        sampling = studies.sampling_settings(lm_dir)
        by_setting = {}
        for t, g in [(t, g) for t in args.temperatures for g in args.guidance]:
            # "+": lmvision-eval composes image_classifier's evaluation (none) before it reads
            # the checkpoint's, and these are pixel_lm's
            r = studies.evaluate([f"ckpt_path={tested}", *trainer, "+evaluation.probe=null",
                                  f"+evaluation.sampling.temperature={t}",
                                  f"+evaluation.sampling.guidance={g}",
                                  f"+evaluation.generation.samples_per_class="
                                  f"{args.gen_samples_per_class}",
                                  f"+evaluation.generation.judge={judge_ckpt}"],
                                 Path(tmp) / f"eval-{t}-{g}")
            by_setting[(t, g)] = {k: r[k] for k in ("gen/acc", "gen/acc_caption")}
            print(f"temperature {t:g}, guidance {g:g}: gen/acc {r['gen/acc']:.4f}, caption "
                  f"{r['gen/acc_caption']:.4f}", flush=True)
        prefix = f"{args.device}_shapes_"
        pngs = sorted((lm_dir / "figures").glob("samples_*.png"))
        for png in pngs:
            if args.write_readme:
                shutil.copy(png, HERE / f"{prefix}{png.name}")
            if args.out:
                shutil.copy(png, args.out / f"{prefix}{png.name}")

    gap = 100 * (lm["probe/acc_best"] - lm["probe/acc_random_init"])
    checks = {
        f"shapes: probe/acc_best − probe/acc_random_init ≥ 10 points ({gap:+.1f})": gap >= 10,
        f"shapes: class-conditioned gen/acc ≥ 0.8 ({lm['gen/acc']:.4f}; caption-conditioned "
        f"{lm['gen/acc_caption']:.4f})": lm["gen/acc"] >= 0.8,
    }
    layers = sorted((k for k in lm if k.startswith("probe/acc_layer_")),
                    key=lambda k: int(k.rsplit("_", 1)[1]))
    command = " ".join(sys.argv[1:])
    lines = [
        f"{where} Seed {args.seed}. Command: `python "
        f"experiments/pixel_lm/larger_shapes.py {command}`.", "",
        f"Data: {args.num_images} shapes images (70 % train). "
        f"Model: dim {args.dim}, depth {args.depth}, heads {args.heads}; batch {args.batch}, lr "
        f"{args.lr}, up to {args.epochs} epochs or {args.max_minutes:g} min of training "
        f"(trained {epochs} epochs in {lm['fit_seconds']:.0f} s; the checkpoint with the best "
        f"val/bits_per_dim is tested; its gen/acc sampled at {sampling}).", "",
        "| data | probe, pretrained (block chosen by CV) | probe, random init | probe, raw pixels "
        "| CNN (judge) | test bits/dim | gen/acc (class) | gen/acc (caption) |",
        "|---|---|---|---|---|---|---|---|",
        f"| shapes | {lm['probe/acc_best']:.4f} (block {lm['probe/best_layer']:.0f}) | "
        f"{lm['probe/acc_random_init']:.4f} | {lm['probe/acc_pixels']:.4f} | "
        f"{judge['test/acc']:.4f} | {lm['test/bits_per_dim']:.3f} | {lm['gen/acc']:.4f} | "
        f"{lm['gen/acc_caption']:.4f} |", "",
        "Probe test accuracy by block: " + ", ".join(
            f"{k.rsplit('_', 1)[1]}: {lm[k]:.4f}" for k in layers) + ".", "",
        *([f"gen/acc of the tested checkpoint by sampling temperature and classifier-free "
            f"guidance weight (1: none; no top-k, no top-p; {args.gen_samples_per_class} "
            f"class-conditioned samples per class, and as many caption-conditioned ones, up to "
            f"the test split's size):", "",
            "| temperature | guidance | gen/acc (class) | gen/acc (caption) |", "|---|---|---|---|",
            *[f"| {t:g} | {g:g} | {r['gen/acc']:.4f} | {r['gen/acc_caption']:.4f} |"
              for (t, g), r in by_setting.items()], ""] if by_setting else []),
        f"Sample grids of the last validation epoch: `{prefix}samples_*.png` beside this README.",
        "", *[f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks.items()],
    ]
    text = "\n".join(lines)
    print(text)
    results = {"judge": judge, "pixel_lm": lm, "overrides": lm_overrides,
               "gen_by_setting": [{"temperature": t, "guidance": g, **r}
                                  for (t, g), r in by_setting.items()]}
    if args.out:
        write_json(args.out / f"{args.device}_shapes.json", results)
    if args.write_readme:
        studies.write_results(HERE / "README.md", text, args.device)
        write_json(HERE / f"results_{args.device}_shapes.json", results)
    return 0 if all(checks.values()) else 1


def _kept(judge_dir: Path, lm_dir: Path, lm_overrides: list[str]) -> tuple[dict, dict]:
    """The judge's and the pixel LM's results from runs kept by ``--keep``, after checking
    that the pixel LM was trained with ``lm_overrides`` (the options given now)."""
    import yaml

    for run_dir in (judge_dir, lm_dir):
        if not (run_dir / "metrics.json").is_file():
            raise SystemExit(f"--from-runs: {run_dir} holds no finished run (no metrics.json)")
    trained = yaml.safe_load((lm_dir / ".hydra" / "overrides.yaml").read_text())
    trained = [o for o in trained if not o.startswith(("evaluation.generation.judge=", "callbacks."))]
    if trained != lm_overrides:
        raise SystemExit(f"--from-runs: {lm_dir} was trained with {' '.join(trained)}, not with "
                         f"the options given now ({' '.join(lm_overrides)})")
    return studies.read_run(judge_dir), studies.read_run(lm_dir)


def _tested_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run tested (named in its run record; the run may have been moved)."""
    tested = json.loads((run_dir / "run.json").read_text()).get("tested_checkpoint")
    path = run_dir / "checkpoints" / Path(tested or "last.ckpt").name
    if not path.is_file():
        raise SystemExit(f"{run_dir}: the checkpoint it tested, {path.name}, is not there")
    return path


def _epochs(run_dir: Path) -> int:
    """Epochs trained: the epochs with a validation row in the CSV log."""
    import csv

    seen = set()
    for path in run_dir.glob("csv/**/metrics.csv"):
        with open(path) as f:
            seen |= {row["epoch"] for row in csv.DictReader(f) if row.get("val/bits_per_dim")}
    return len(seen)


if __name__ == "__main__":
    sys.exit(main())
