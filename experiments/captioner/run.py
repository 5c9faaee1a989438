"""Captioner study: does one model that decides and explains write good captions, and are its
explanations faithful to its decisions? Writes README.md's results and the panel sheet beside it.

    .venv/bin/python experiments/captioner/run.py --write-readme     # 7-25 min on 2 CPU cores
    .venv/bin/python experiments/captioner/run.py --quick            # a smoke run

For each seed: `python -m lmvision.train experiment=captioner_shapes` (the multi-task
captioner: caption scores against 5 references per test image, and explain/* at test), then
`python -m lmvision.explain` on its last checkpoint over the test split with every saliency
method (Grad-CAM, integrated gradients, occlusion, LIME): pointing per method beside the
random-peak baseline, and the panel sheet. Last, decoding speed (its own README section;
`--speed-only CKPT` measures just that, for a trained `captioner_shapes` checkpoint): captions
per second of the trained model on test images
at batch 1 and 64, greedy and beam search (4 beams), with and without the KV cache (the median
of timed runs after a warm-up), whether greedy captions are identical with and without it, and
the same greedy timings for a larger decoder of the same design (a GPT-2 of width 512 and 8
layers built from a config, random weights) forced to write 39 tokens, where recomputing the
whole sequence at every step costs more than the cache's bookkeeping. The timings use the
hand-written loop of `decoding.py` beside this file, which decodes with and without the cache
(the product, `Captioner.generate`, decodes with Hugging Face's `generate`, which always uses
it; tests/test_decoding.py checks that both give the same captions).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import studies  # noqa: E402  (experiments/studies.py)
from studies import mean_std  # noqa: E402

METHODS = ("gradcam", "integrated_gradients", "occlusion", "lime")


def explain(ckpt: Path, out: Path, limit: int | None) -> dict:
    cmd = [sys.executable, "-m", "lmvision.explain", f"ckpt_path={ckpt}", f"hydra.run.dir={out}",
           f"explain.saliency=[{','.join(METHODS)}]"] + ([f"explain.limit={limit}"] if limit else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"explain failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text())


def timed(generate, batch: int, repeats: int) -> float:
    """Captions per second: the median of ``repeats`` timed calls after a warm-up call."""
    return batch / studies.median_seconds(generate, repeats, warmup=1)


def decoding_speed(ckpt: Path, quick: bool) -> tuple[list[dict], bool]:
    """Captions per second of the trained captioner on test images, and of a larger decoder."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import lmvision.config  # noqa: F401  (resolvers)
    from lmvision.config import config_dir
    from lmvision.run.parts import load_strategy

    from decoding import hand_generate  # experiments/captioner/decoding.py

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        base = compose("explain", overrides=[f"ckpt_path={ckpt}"], return_hydra_config=False)
    OmegaConf.set_struct(base, False)
    base.paths.output_dir = tempfile.mkdtemp()
    model, datamodule = load_strategy(base, str(ckpt), "ckpt_path")
    datamodule.setup("test")
    count = min(64, len(datamodule.data_test))
    images = torch.stack([datamodule.data_test[i % count]["image"] for i in range(64)])
    greedy_same = torch.equal(hand_generate(model.net, images, use_cache=True),
                              hand_generate(model.net, images, use_cache=False))
    rows = []
    for batch in (1, 64):
        for decoding in ("greedy", "beam"):
            for cache in (True, False):
                x = images[:batch]
                rate = timed(lambda x=x, decoding=decoding, cache=cache: hand_generate(
                    model.net, x, decoding=decoding, num_beams=4, use_cache=cache), batch,
                    1 if quick else 3)
                rows.append({"model": "trained", "batch": batch, "decoding": decoding,
                             "cache": cache, "captions_per_s": rate})
                print(rows[-1], flush=True)
    from lmvision.nn.captioner import Captioner
    from lmvision.text.side import TextSide

    torch.manual_seed(0)
    width, depth = (64, 2) if quick else (512, 8)
    large = Captioner(model.net.image_encoder, datamodule.image_size, datamodule.channels,
                      TextSide("caption", datamodule.tokenizer, causal=True), dim=width,
                      depth=depth, heads=8, max_length=40).eval()
    for batch in (1, 64):
        for cache in (True, False):
            x = images[:batch]
            rate = timed(lambda x=x, cache=cache: hand_generate(large, x, min_length=39,
                                                                use_cache=cache), batch, 1)
            rows.append({"model": f"GPT-2 {width} wide, {depth} layers", "batch": batch,
                         "decoding": "greedy, 39 tokens", "cache": cache, "captions_per_s": rate})
            print(rows[-1], flush=True)
    return rows, greedy_same


def speed_text(speed: list[dict], greedy_same: bool, command: str, where: str) -> str:
    by = {(r["model"], r["batch"], r["decoding"], r["cache"]): r["captions_per_s"] for r in speed}
    models = list(dict.fromkeys(r["model"] for r in speed))
    kinds = list(dict.fromkeys((r["model"], r["decoding"]) for r in speed))
    lines = [
        f"{where} Command: `{command}`.", "",
        "| decoding (captions / s) | batch | KV cache | no cache | speed-up |", "|---|---|---|---|---|",
        *[f"| {m}, {d} | {b} | {by[(m, b, d, True)]:.1f} | {by[(m, b, d, False)]:.1f} | "
          f"{by[(m, b, d, True)] / by[(m, b, d, False)]:.2f}× |"
          for m, d in kinds for b in (1, 64) if (m, b, d, True) in by], "",
        f"- {'PASS' if greedy_same else 'FAIL'}: greedy captions identical with and without the "
        f"KV cache ({greedy_same})",
    ]
    large = models[-1]
    for b in (1, 64):
        x = by[(large, b, "greedy, 39 tokens", True)] / by[(large, b, "greedy, 39 tokens", False)]
        lines.append(f"- {'PASS' if x > 1 else 'FAIL'}: the KV cache is faster for the {large} "
                     f"decoder at batch {b} ({x:.2f}×)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--speed-only", type=Path, default=None, metavar="CKPT",
                        help="only the decoding-speed section, for this captioner checkpoint")
    args = parser.parse_args()
    where = studies.environment_line()  # before the panel sheet is copied beside the README
    if args.speed_only:
        speed, greedy_same = decoding_speed(args.speed_only, args.quick)
        text = speed_text(speed, greedy_same, "python experiments/captioner/run.py --speed-only "
                                              "<captioner_shapes run>/checkpoints/last.ckpt",
                          where)
        print(text)
        if args.write_readme:
            studies.write_results(HERE / "README.md", text, section="speed")
        return 0
    quick = ["data.num_images=300", "data.image_size=16", "trainer.max_epochs=1"] if args.quick else []

    trained, explained = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            run_dir = Path(tmp) / f"captioner-{seed}"
            r = studies.train(["experiment=captioner_shapes", "logger=csv", f"seed={seed}", *quick],
                              run_dir)
            trained.append(r)
            print(f"seed {seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.items()
                                                if k.startswith(("test/", "explain/"))), flush=True)
            ckpt = run_dir / "checkpoints" / "last.ckpt"
            out = Path(tmp) / f"explain-{seed}"
            explained.append(explain(ckpt, out, 40 if args.quick else None))
            print(f"seed {seed} explain: {explained[-1]}", flush=True)
            if seed == args.seeds[0]:
                first_ckpt, sheet = ckpt, out / "explanations.png"
                if args.write_readme:
                    shutil.copy(sheet, HERE / "explanations.png")
                speed, greedy_same = decoding_speed(first_ckpt, args.quick)

    def col(rows, key):
        values = [r[key] for r in rows if key in r]
        return mean_std(values) if values else "—"

    def mean(rows, key):
        return statistics.mean(r[key] for r in rows)

    checks = [
        ("test/bleu4 ≥ 0.5 (5 references per image)", mean(trained, "test/bleu4") >= 0.5,
         f"{mean(trained, 'test/bleu4'):.4f}"),
        ("explain/mention_rate ≥ 0.9", mean(explained, "explain/mention_rate") >= 0.9,
         f"{mean(explained, 'explain/mention_rate'):.4f}"),
        ("explain/consistency ≥ 0.9", mean(explained, "explain/consistency") >= 0.9,
         f"{mean(explained, 'explain/consistency'):.4f}"),
        ("explain/pointing ≥ 0.8 for one saliency method", mean(explained, "explain/pointing") >= 0.8,
         f"{mean(explained, 'explain/pointing'):.4f}"),
    ]
    lines = [
        f"{where} Seeds {', '.join(map(str, args.seeds))}. Command: "
        f"`python experiments/captioner/run.py{' --quick' if args.quick else ''} --write-readme`.",
        "",
        "| caption scores (test, 5 references) | BLEU-1 | BLEU-4 | ROUGE-L | CIDEr | test/acc (head) |",
        "|---|---|---|---|---|---|",
        f"| multi-task captioner | {col(trained, 'test/bleu1')} | {col(trained, 'test/bleu4')} | "
        f"{col(trained, 'test/rougeL')} | {col(trained, 'test/cider')} | {col(trained, 'test/acc')} |",
        "",
        "| faithfulness (test split, lmvision-explain) | value |",
        "|---|---|",
        f"| mention rate (caption names the predicted class) | {col(explained, 'explain/mention_rate')} |",
        f"| consistency (text classifier on the caption ÷ image accuracy) | "
        f"{col(explained, 'explain/consistency')} |",
        f"| counterfactual (object masked: caption and prediction change together) | "
        f"{col(explained, 'explain/counterfactual')} |",
        *[f"| pointing, {m.replace('_', ' ')} | {col(explained, f'explain/pointing_{m}')} |"
          for m in METHODS],
        f"| pointing, a random peak (the object's share of the image) | "
        f"{col(explained, 'explain/pointing_random')} |",
        "",
        *[f"- {'PASS' if ok else 'FAIL'}: {name} ({value})" for name, ok, value in checks],
    ]
    text = "\n".join(lines)
    timings = speed_text(speed, greedy_same, "python experiments/captioner/run.py --write-readme",
                         where)
    print(text, timings, sep="\n\n")
    if args.write_readme:
        studies.write_results(HERE / "README.md", text)
        studies.write_results(HERE / "README.md", timings, section="speed")
        (HERE / "results.json").write_text(json.dumps(
            {"train": trained, "explain": explained, "speed": speed}, indent=1) + "\n")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
