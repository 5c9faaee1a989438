"""Overhead study: lmvision's training loop against a plain PyTorch loop, in one process.

The same network and initial weights, batches and optimiser, trained per repeat by the real
``ClassificationStrategy`` under a ``pytorch_lightning.Trainer`` and by a hand-written loop,
in alternating order. Prints the median step times, their ratio (lmvision / plain) and the
largest per-step loss difference; exits non-zero when the ratio exceeds 1.05 or the losses
differ by more than 1e-5. README.md next to this file explains what is measured and why.

    .venv/bin/python experiments/overhead/run.py                  # full study
    .venv/bin/python experiments/overhead/run.py --write-readme   # ... and update README.md
    .venv/bin/python experiments/overhead/run.py --quick          # smoke run: losses only
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import logging
import math
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from lmvision.data.datamodule import ImageDataModule
from lmvision.data.shapes import ShapesDataset
from lmvision.files import write_json
from lmvision.nn.classifiers import ImageClassifier
from lmvision.nn.heads import LinearHead
from lmvision.nn.image_encoders import SmallCNN
from lmvision.strategies.optim import AdamW
from lmvision.strategies.classification import ClassificationStrategy

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import studies  # noqa: E402  (experiments/studies.py)

RATIO_TARGET = 1.05  # lmvision median step time / plain median step time
LOSS_TOLERANCE = 1e-5  # max |loss_lmvision - loss_plain| over all steps and repeats
BUSY_WARNING = 0.25  # CPU cores used by other processes above which the report warns
IMAGE_SIZE, LEARNING_RATE = 32, 1e-3
SIDES = ("lmvision", "plain")
# The Trainer of the lmvision side (plus max_steps/max_epochs); README.md explains each choice.
TRAINER_SETTINGS = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, deterministic=True)


def build_batches(args: argparse.Namespace) -> tuple[list[dict], ImageDataModule]:
    """``--steps`` full batches from epochs 0, 1, ... of the datamodule's (seeded) train loader,
    and the datamodule; short last batches are skipped so every step does the same work."""
    dataset = ShapesDataset(num_images=args.num_images, image_size=IMAGE_SIZE, seed=0)
    dm = ImageDataModule(dataset, num_classes=len(dataset.classes), image_size=IMAGE_SIZE,
                         channels=dataset.channels, task=dataset.task,
                         batch_size=args.batch_size, split_seed=args.seed)
    dm.setup("fit")
    if len(dm.data_train) < args.batch_size:
        raise SystemExit(f"--num-images={args.num_images} gives {len(dm.data_train)} training "
                         f"items, fewer than --batch-size={args.batch_size}")
    batches: list[dict] = []
    for epoch in range(args.steps):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        batches += [b for b in loader if len(b["label"]) == args.batch_size]
        if len(batches) >= args.steps:
            return batches[:args.steps], dm
    raise AssertionError("unreachable: every epoch gives at least one full batch")


def make_loader(batches: list[dict]) -> DataLoader:
    """What both sides iterate: no workers, no shuffling, the prebuilt batch dicts as they are."""
    return DataLoader(batches, batch_size=None, shuffle=False, num_workers=0,
                      collate_fn=lambda batch: batch)


class Run(pl.Callback):
    """What one run of one side records. A step ends right after the optimiser step (lmvision:
    first thing in on_train_batch_end, this being a callback); a step's time runs from the
    previous step's end, so it covers everything the loop does per batch. Created just before
    the model is built."""

    def __init__(self, seed: int) -> None:
        pl.seed_everything(seed, verbose=False)
        gc.collect()
        self.ends: list[float] = []  # perf_counter() at the end of each step
        self.cpu_ends: list[float] = []  # thread_time() of the main thread at the same moments
        self.losses: list[torch.Tensor] = []  # detached loss of each step
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        """(wall s, CPU s the whole machine used so far, CPU s this process used so far)."""
        machine = math.nan
        try:  # Linux: user nice system idle iowait irq softirq steal, in clock ticks
            with open("/proc/stat") as f:
                ticks = [int(x) for x in f.readline().split()[1:9]]
            machine = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
        own = os.times()
        return time.perf_counter(), machine, own.user + own.system

    def step_done(self, loss: torch.Tensor) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.thread_time())
        self.losses.append(loss.detach())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_done(outputs["loss"])

    def stop(self) -> Run:
        """Set ``wall_s`` (the whole run) and ``other_cores`` (cores other processes used)."""
        (w0, m0, o0), (w1, m1, o1) = self._start, self._snapshot()
        self.wall_s = w1 - w0
        self.other_cores = max(0.0, (m1 - m0) - (o1 - o0)) / max(self.wall_s, 1e-9)
        return self

    def step_times(self, warmup: int, cpu: bool = False) -> list[float]:
        """Seconds per step (wall, or main-thread CPU): the first step has no predecessor, then
        ``warmup`` more are dropped."""
        ends = self.cpu_ends if cpu else self.ends
        return [b - a for a, b in itertools.pairwise(ends)][warmup:]


def run_lmvision(encoder0: nn.Module, head0: nn.Module, dm: ImageDataModule,
                 batches: list[dict], seed: int) -> Run:
    """The real strategy and net under a Trainer, with the real datamodule (its
    ``transfer_batch_to_device`` runs every step) serving the prebuilt batches."""
    run = Run(seed)
    net = ImageClassifier(copy.deepcopy(encoder0), lambda in_dim, out_dim: copy.deepcopy(head0),
                          dm.num_classes)
    # decay_all: every parameter decayed by 0.01, as torch.optim.AdamW(params, lr) does
    optimizer = AdamW(lr=LEARNING_RATE, weight_decay=0.01, decay_all=True)
    model = ClassificationStrategy(net, dm.num_classes, task="multiclass", optimizer=optimizer,
                                   scheduler=None)
    trainer = pl.Trainer(max_steps=len(batches), max_epochs=1, callbacks=[run], **TRAINER_SETTINGS)
    serving = copy.copy(dm)
    serving.train_dataloader = lambda: make_loader(batches)
    trainer.fit(model, datamodule=serving)
    if len(run.ends) != len(batches):
        raise RuntimeError(f"lmvision ran {len(run.ends)} steps, expected {len(batches)}")
    return run.stop()


def run_plain(encoder0: nn.Module, head0: nn.Module, batches: list[dict], seed: int) -> Run:
    """The same encoder + head trained by a hand-written loop."""
    run = Run(seed)
    model = nn.Sequential(copy.deepcopy(encoder0), copy.deepcopy(head0)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    for batch in make_loader(batches):
        loss = nn.functional.cross_entropy(model(batch["image"]), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step_done(loss)
    return run.stop()


def bootstrap_ratio(lmvision: list[list[float]], plain: list[list[float]], seed: int,
                    resamples: int = 2000) -> tuple[float, float]:
    """95% percentile interval of the ratio of pooled medians, resampling whole repeats (the
    independent units; a repeat's two runs stay paired, so slow phases hit both sides)."""
    rng, n, ratios = random.Random(seed), len(plain), []
    for _ in range(resamples):
        pick = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median([t for i in pick for t in lmvision[i]])
                      / statistics.median([t for i in pick for t in plain[i]]))
    ratios.sort()
    return ratios[int(0.025 * (resamples - 1))], ratios[int(0.975 * (resamples - 1))]


def measure(args: argparse.Namespace) -> dict[str, list[Run]]:
    """The interleaved repeats: the kept runs of each side, and the load of discarded repeats."""
    batches, dm = build_batches(args)
    pl.seed_everything(args.seed, verbose=False)
    encoder0 = SmallCNN(in_channels=3)
    head0 = LinearHead(in_dim=encoder0.out_dim, out_dim=dm.num_classes)
    kept: dict[str, list[Run]] = {s: [] for s in SIDES}
    discarded: list[float] = []
    while len(kept["plain"]) < args.repeats:
        r = len(kept["plain"])
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        runs = {s: run_lmvision(encoder0, head0, dm, batches, args.seed) if s == "lmvision"
                else run_plain(encoder0, head0, batches, args.seed) for s in order}
        busy = max(run.other_cores for run in runs.values())
        if busy > args.max_other_cores and len(discarded) < args.max_discards:
            discarded.append(busy)
            print(f"  repeat {r + 1:>2}/{args.repeats}: other processes used {busy:.2f} cores "
                  f"(> --max-other-cores={args.max_other_cores}); running it again", flush=True)
            continue
        for s in SIDES:
            kept[s].append(runs[s])
        ms = {s: statistics.median(runs[s].step_times(args.warmup)) * 1e3 for s in SIDES}
        pairs = zip(runs["lmvision"].losses, runs["plain"].losses)
        diff = max((a - b).abs().item() for a, b in pairs)
        print(f"  repeat {r + 1:>2}/{args.repeats} ({order[0]} first): lmvision "
              f"{ms['lmvision']:.2f} ms, plain {ms['plain']:.2f} ms, ratio "
              f"{ms['lmvision'] / ms['plain']:.4f}, max |dloss| {diff:.3g}, "
              f"other processes {busy:.2f} cores", flush=True)
    return {**kept, "discarded": discarded}


def summarise(args: argparse.Namespace, runs: dict, elapsed: float) -> tuple[list[str], dict]:
    """The report lines and the JSON summary of the kept runs."""
    def ms(values) -> float:
        return statistics.median(values) * 1e3

    per_repeat = {s: [run.step_times(args.warmup) for run in runs[s]] for s in SIDES}
    wall = {s: [t for steps in per_repeat[s] for t in steps] for s in SIDES}
    cpu = {s: [t for run in runs[s] for t in run.step_times(args.warmup, cpu=True)] for s in SIDES}
    losses = {s: [torch.stack(run.losses).double() for run in runs[s]] for s in SIDES}
    med = {s: ms(wall[s]) for s in SIDES}
    ratio, cpu_ratio = med["lmvision"] / med["plain"], ms(cpu["lmvision"]) / ms(cpu["plain"])
    repeat_ratios = [ms(a) / ms(b) for a, b in zip(per_repeat["lmvision"], per_repeat["plain"])]
    low, high = bootstrap_ratio(per_repeat["lmvision"], per_repeat["plain"], args.seed)
    loss_diff = max((a - b).abs().max().item() for a, b in zip(*losses.values()))
    drift = {s: max((v - losses[s][0]).abs().max().item() for v in losses[s]) for s in SIDES}
    busy = [run.other_cores for s in SIDES for run in runs[s] if not math.isnan(run.other_cores)]
    busy_median = statistics.median(busy) if busy else math.nan
    ratio_ok, loss_ok, threads = ratio <= RATIO_TARGET, loss_diff <= LOSS_TOLERANCE, args.threads
    lines = [
        studies.environment_line(),
        f"settings: repeats={args.repeats} steps={args.steps} warmup={args.warmup} batch_size="
        f"{args.batch_size} num_images={args.num_images} seed={args.seed} threads={threads}"
        f"{' (--quick)' if args.quick else ''}; timed steps per side: {len(wall['plain'])}",
        f"other processes during the kept runs: {busy_median:.2f} CPU cores busy (median over "
        f"runs; max {max(busy, default=math.nan):.2f}); repeats run again because of them: "
        f"{len(runs['discarded'])}",
        "",
        "side      median step (ms)   run wall (s)   main-thread CPU per step (ms)",
        *[f"{s:<9} {med[s]:>16.2f} {statistics.median(r.wall_s for r in runs[s]):>14.2f} "
          f"{ms(cpu[s]):>31.2f}" for s in SIDES],
        "",
        f"median step-time ratio lmvision/plain: {ratio:.4f} "
        f"({med['lmvision'] - med['plain']:+.2f} ms per step)",
        f"95% interval of that ratio (bootstrap over repeats): {low:.4f} .. {high:.4f}",
        f"per-repeat ratios: min {min(repeat_ratios):.4f}, median "
        f"{statistics.median(repeat_ratios):.4f}, max {max(repeat_ratios):.4f}",
        f"same ratio on main-thread CPU time: {cpu_ratio:.4f}"
        + ("" if threads == 1 else f" (misses {threads - 1} intra-op thread(s): indicative only)"),
        f"max |loss_lmvision - loss_plain| over {args.repeats} x {args.steps} steps: "
        f"{loss_diff:.3g}" + (" (bit-identical)" if loss_diff == 0 else ""),
        f"repeat-to-repeat loss drift: lmvision {drift['lmvision']:.3g}, "
        f"plain {drift['plain']:.3g}",
        "",
        *([f"WARNING: other processes kept {busy_median:.2f} cores busy; wall-clock times are "
           "noisy, compare the CPU-time ratio"] if busy_median > BUSY_WARNING else []),
        f"timing: NOT CHECKED with --quick (ratio {ratio:.4f}; target {RATIO_TARGET})"
        if args.quick else f"timing: {'PASS' if ratio_ok else 'FAIL'} (ratio {ratio:.4f} "
        f"{'<=' if ratio_ok else '>'} {RATIO_TARGET})",
        f"losses: {'PASS' if loss_ok else 'FAIL'} (max diff {loss_diff:.3g} "
        f"{'<=' if loss_ok else '>'} {LOSS_TOLERANCE:g})",
        f"study time: {elapsed:.0f} s",
    ]
    summary = {
        "median_step_ms": med, "median_cpu_step_ms": {s: ms(cpu[s]) for s in SIDES},
        "ratio": ratio, "ratio_95_interval": [low, high], "cpu_ratio": cpu_ratio,
        "per_repeat_ratio": repeat_ratios, "max_loss_diff": loss_diff, "loss_drift": drift,
        "other_cores_median": busy_median, "timing_checked": not args.quick,
        "timing_pass": ratio_ok, "loss_pass": loss_ok, "pass": loss_ok and (ratio_ok or args.quick),
        "step_times_s": wall, "cpu_step_times_s": cpu, "threads": threads,
        "discarded_repeats_other_cores": runs["discarded"],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    return lines, summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeats", type=int, default=16, help="interleaved repeats of both sides")
    p.add_argument("--steps", type=int, default=50, help="training steps per run")
    p.add_argument("--warmup", type=int, default=5,
                   help="steps dropped from the timing of each run (after the first one)")
    p.add_argument("--batch-size", type=int, default=128, help="as in conf/data/shapes.yaml")
    p.add_argument("--num-images", type=int, default=6000, help="shapes rendered")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for both "
                   "sides (default: torch's default, what `python -m lmvision.train` runs with)")
    p.add_argument("--max-other-cores", type=float, default=0.25, help="run a repeat again when "
                   "other processes kept more cores than this busy (at most --repeats times)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (2 repeats, 30 steps, 1500 images); checks losses, not timing")
    p.add_argument("--write-readme", action="store_true",
                   help="rewrite the results section of README.md with this run's report")
    p.add_argument("--json", type=Path, default=None, help="also write a JSON summary here")
    args = p.parse_args(argv)
    args.max_discards = 0 if args.quick else args.repeats
    if args.quick:
        args.repeats, args.steps, args.num_images = 2, 30, 1500
    if args.quick and args.write_readme:
        p.error("--write-readme needs a full run, not --quick")
    if args.threads is None:
        args.threads = torch.get_num_threads()
    if args.repeats < 1 or args.warmup < 0 or args.steps < args.warmup + 3 or args.threads < 1:
        p.error("need --repeats >= 1, --threads >= 1, 0 <= --warmup <= --steps - 3")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # what Trainer(deterministic=True) sets, for both
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)  # Lightning's start-up messages
    for message in (".*does not have many workers.*", ".*validation_step.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message=message)  # triggered on purpose here
    print(f"overhead study: {args.repeats} repeats x {args.steps} steps, batch {args.batch_size}, "
          f"{args.threads} thread(s)", flush=True)
    started = time.perf_counter()
    runs = measure(args)
    lines, summary = summarise(args, runs, time.perf_counter() - started)
    report = "\n".join(lines)
    print(f"\n{report}")
    if args.json:
        write_json(args.json, summary)
    if args.write_readme:
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python experiments/overhead/run.py", *given])
        studies.write_results(HERE / "README.md", f"Command: `{command}`\n\n```text\n{report}\n```")
        print(f"wrote the results section of {HERE / 'README.md'}")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
