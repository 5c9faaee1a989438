"""Overhead study: lmvision's training loop against a plain PyTorch loop, in one process.

The same model (SmallCNN + LinearHead, same initial weights), the same batches (materialised
once from ``ShapesDataset`` + ``ImageDataModule``), the same optimiser and the same seed are
trained twice per repeat: once by the real ``ImageClassifier`` LightningModule under a
``pytorch_lightning.Trainer`` and once by a hand-written loop. The two sides alternate which
goes first. The script prints the median step time of each side, their ratio
(lmvision / plain) and the largest per-step loss difference, and exits non-zero when the
ratio exceeds 1.05 or the losses differ by more than 1e-5.

    .venv/bin/python experiments/overhead/run.py                  # full study (about 3 minutes)
    .venv/bin/python experiments/overhead/run.py --write-readme   # ... and update README.md
    .venv/bin/python experiments/overhead/run.py --quick          # smoke run: losses only

See README.md next to this file for what is measured and why.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import functools
import gc
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lmvision.data.datamodule import ImageDataModule
from lmvision.data.shapes import ShapesDataset
from lmvision.nn.heads import LinearHead
from lmvision.nn.image_encoders import SmallCNN
from lmvision.strategies.image_classifier import ImageClassifier

RATIO_TARGET = 1.05  # lmvision median step time / plain median step time
LOSS_TOLERANCE = 1e-5  # max |loss_lmvision - loss_plain| over all steps and repeats
BUSY_WARNING = 0.25  # CPU cores used by other processes above which the report warns
IMAGE_SIZE = 32
LEARNING_RATE = 1e-3

README = Path(__file__).with_name("README.md")
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"

# The Trainer of the lmvision side (plus max_steps/max_epochs); README.md explains each choice.
TRAINER_SETTINGS = dict(
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
    deterministic=True,
)


# ------------------------------------------------------------------------------------------
# Data: one fixed list of batch dicts, fed to both sides through the same kind of loader.
# ------------------------------------------------------------------------------------------
def build_batches(num_images: int, batch_size: int, steps: int, seed: int):
    """``steps`` full training batches from the lmvision datamodule, and that datamodule.

    Epochs of ``dm.train_dataloader()`` are drawn (its shuffle seeded by ``seed``) until
    ``steps`` full batches are collected; a short last batch of an epoch is skipped so that
    every step does the same amount of work.
    """
    dataset = ShapesDataset(num_images=num_images, image_size=IMAGE_SIZE, seed=0)
    dm = ImageDataModule(dataset, num_classes=len(dataset.classes), image_size=IMAGE_SIZE,
                         channels=dataset.channels, task=dataset.task, batch_size=batch_size,
                         split_seed=seed)
    dm.setup("fit")
    if len(dm.data_train) < batch_size:
        raise SystemExit(f"--num-images={num_images} gives {len(dm.data_train)} training items, "
                         f"fewer than --batch-size={batch_size}")
    torch.manual_seed(seed)  # the train loader shuffles with the global generator
    batches: list[dict] = []
    while len(batches) < steps:
        for batch in dm.train_dataloader():
            if len(batch["label"]) == batch_size:
                batches.append(batch)
            if len(batches) == steps:
                break
    return batches, dm


class PrebuiltBatches(Dataset):
    """Item ``i`` is the ready-made batch dict ``i``; served with ``batch_size=None``."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def _as_is(batch: dict) -> dict:
    return batch


def make_loader(batches: list[dict]) -> DataLoader:
    """The loader both sides iterate: no workers, no shuffling, batches passed through as is."""
    return DataLoader(PrebuiltBatches(batches), batch_size=None, shuffle=False, num_workers=0,
                      collate_fn=_as_is)


# ------------------------------------------------------------------------------------------
# The two sides. Timing definition (the same on both): a step's time is the interval between
# the end of the previous step and the end of this one, the end being taken right after the
# optimiser step (lmvision: first thing in on_train_batch_end). So a step covers everything
# the loop does per batch: fetching it, the hooks, forward, backward, the optimiser, logging.
# ------------------------------------------------------------------------------------------
def _cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, CPU s used by the whole machine so far, CPU s used by this process so far)."""
    machine = math.nan
    try:  # Linux: user nice system idle iowait irq softirq steal, in clock ticks
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        machine = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    own = os.times()
    return time.perf_counter(), machine, own.user + own.system


class RunRecord:
    """What one run of one side recorded."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.ends: list[float] = []  # perf_counter() at the end of each step
        self.cpu_ends: list[float] = []  # thread_time() of the main thread at the same moments
        self.losses: list[torch.Tensor] = []  # detached loss of each step
        self.wall_s = 0.0  # whole run: model and Trainer set-up, all steps, teardown
        self.other_cores = math.nan  # mean CPU cores used by other processes during the run
        self._snapshot = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self._snapshot = _cpu_snapshot()

    def stop(self) -> None:
        wall, machine, own = _cpu_snapshot()
        w0, m0, o0 = self._snapshot
        self.wall_s = wall - w0
        self.other_cores = max(0.0, (machine - m0) - (own - o0)) / max(self.wall_s, 1e-9)

    def step_times(self, warmup: int) -> list[float]:
        """Per-step seconds; the first step has no predecessor, then ``warmup`` more are dropped."""
        return [b - a for a, b in zip(self.ends, self.ends[1:])][warmup:]

    def cpu_times(self, warmup: int) -> list[float]:
        """Like ``step_times`` in CPU seconds of the main thread (blind to other processes)."""
        return [b - a for a, b in zip(self.cpu_ends, self.cpu_ends[1:])][warmup:]

    def loss_values(self) -> torch.Tensor:
        return torch.stack(self.losses).double()


class StepRecorder(pl.Callback):
    """Records the end time and the loss of every training step."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record.ends.append(time.perf_counter())
        self.record.cpu_ends.append(time.thread_time())
        self.record.losses.append(outputs["loss"].detach())


def _copied_head(in_dim: int, out_dim: int, *, initial: nn.Module) -> nn.Module:
    """The ``head`` callable for ImageClassifier: a copy of the shared initial head."""
    if (initial.fc.in_features, initial.fc.out_features) != (in_dim, out_dim):
        raise ValueError(f"initial head is {initial.fc}, asked for ({in_dim}, {out_dim})")
    return copy.deepcopy(initial)


def _optimizer() -> functools.partial:
    return functools.partial(torch.optim.AdamW, lr=LEARNING_RATE)


def run_lmvision(encoder0: nn.Module, head0: nn.Module, datamodule: ImageDataModule,
                 batches: list[dict], seed: int) -> RunRecord:
    """Train the real ImageClassifier with a Lightning Trainer over ``batches``.

    The real datamodule is used (its ``transfer_batch_to_device`` is part of every step), with
    its train loader swapped for the prebuilt batches.
    """
    record = RunRecord("lmvision")
    pl.seed_everything(seed, verbose=False)
    gc.collect()
    record.start()
    model = ImageClassifier(
        encoder=copy.deepcopy(encoder0),
        head=functools.partial(_copied_head, initial=head0),
        num_classes=datamodule.num_classes,
        optimizer=_optimizer(),
        scheduler=None,
        task="multiclass",
    )
    trainer = pl.Trainer(max_steps=len(batches), max_epochs=1, callbacks=[StepRecorder(record)],
                         **TRAINER_SETTINGS)
    serving = copy.copy(datamodule)
    serving.train_dataloader = lambda: make_loader(batches)
    trainer.fit(model, datamodule=serving)
    record.stop()
    if len(record.ends) != len(batches):
        raise RuntimeError(f"lmvision ran {len(record.ends)} steps, expected {len(batches)}")
    return record


def run_plain(encoder0: nn.Module, head0: nn.Module, batches: list[dict], seed: int) -> RunRecord:
    """Train the same encoder + head with a hand-written loop over ``batches``."""
    record = RunRecord("plain")
    pl.seed_everything(seed, verbose=False)
    gc.collect()
    record.start()
    model = nn.Sequential(copy.deepcopy(encoder0), copy.deepcopy(head0))  # head(encoder(x))
    model.train()
    optimizer = _optimizer()([p for p in model.parameters() if p.requires_grad])
    for batch in make_loader(batches):
        logits = model(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record.ends.append(time.perf_counter())
        record.cpu_ends.append(time.thread_time())
        record.losses.append(loss.detach())
    record.stop()
    return record


# ------------------------------------------------------------------------------------------
# Study
# ------------------------------------------------------------------------------------------
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric")


def quiet_lightning() -> None:
    """Silence Lightning's start-up messages and the warnings this set-up triggers on purpose."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in (".*does not have many workers.*", ".*validation_step.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message=message)


def _nproc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_line(threads: int) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"machine: nproc={_nproc()} ({cpu}), {platform.system()} {platform.machine()}; "
            f"torch.set_num_threads({threads})")


def _ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def _pct_ms(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))] * 1e3


def bootstrap_ratio(lmvision: list[list[float]], plain: list[list[float]], seed: int,
                    resamples: int = 2000) -> tuple[float, float]:
    """95% percentile interval of the ratio of pooled medians, resampling whole repeats.

    Repeats are the independent units (steps within a run are correlated), and a repeat's
    two runs stay paired, so slow phases of the machine are resampled with both sides.
    """
    rng = random.Random(seed)
    n = len(plain)
    ratios = []
    for _ in range(resamples):
        pick = [rng.randrange(n) for _ in range(n)]
        lm = [t for i in pick for t in lmvision[i]]
        pt = [t for i in pick for t in plain[i]]
        ratios.append(statistics.median(lm) / statistics.median(pt))
    ratios.sort()
    return ratios[int(0.025 * (resamples - 1))], ratios[int(0.975 * (resamples - 1))]


def study(args: argparse.Namespace) -> tuple[list[str], dict]:
    """Run the interleaved repeats; return the report lines and a summary dict."""
    batches, datamodule = build_batches(args.num_images, args.batch_size, args.steps, args.seed)
    pl.seed_everything(args.seed, verbose=False)
    encoder0 = SmallCNN(in_channels=3)
    head0 = LinearHead(in_dim=encoder0.out_dim, out_dim=datamodule.num_classes)

    sides = ("lmvision", "plain")
    wall = {s: [] for s in sides}  # per-step wall-clock seconds, all repeats
    cpu = {s: [] for s in sides}  # per-step main-thread CPU seconds, all repeats
    run_wall = {s: [] for s in sides}
    losses = {s: [] for s in sides}
    per_repeat = {s: [] for s in sides}  # timed step lists of each repeat, for the bootstrap
    other_cores, repeat_ratios, repeat_diffs = [], [], []
    discarded: list[float] = []  # other-process load of each repeat run again
    started = time.perf_counter()
    r = 0
    while r < args.repeats:
        order = sides if r % 2 == 0 else sides[::-1]
        recs = {}
        for side in order:
            if side == "lmvision":
                recs[side] = run_lmvision(encoder0, head0, datamodule, batches, args.seed)
            else:
                recs[side] = run_plain(encoder0, head0, batches, args.seed)
        busy_now = max(rec.other_cores for rec in recs.values())
        if busy_now > args.max_other_cores and len(discarded) < args.max_discards:
            discarded.append(busy_now)
            print(f"  repeat {r + 1:>2}/{args.repeats}: other processes used {busy_now:.2f} cores "
                  f"(> --max-other-cores={args.max_other_cores}); running it again", flush=True)
            continue
        r += 1
        for side, rec in recs.items():
            wall[side] += rec.step_times(args.warmup)
            per_repeat[side].append(rec.step_times(args.warmup))
            cpu[side] += rec.cpu_times(args.warmup)
            run_wall[side].append(rec.wall_s)
            losses[side].append(rec.loss_values())
            other_cores.append(rec.other_cores)
        ms = {s: _ms(recs[s].step_times(args.warmup)) for s in sides}
        repeat_ratios.append(ms["lmvision"] / ms["plain"])
        repeat_diffs.append((losses["lmvision"][-1] - losses["plain"][-1]).abs().max().item())
        print(f"  repeat {r:>2}/{args.repeats} ({order[0]} first): lmvision "
              f"{ms['lmvision']:.2f} ms, plain {ms['plain']:.2f} ms, ratio {repeat_ratios[-1]:.4f}, "
              f"max |dloss| {repeat_diffs[-1]:.3g}, other processes "
              f"{max(recs['lmvision'].other_cores, recs['plain'].other_cores):.2f} cores", flush=True)
    elapsed = time.perf_counter() - started

    med = {s: _ms(wall[s]) for s in sides}
    ratio = med["lmvision"] / med["plain"]
    cpu_ratio = _ms(cpu["lmvision"]) / _ms(cpu["plain"])
    ci_low, ci_high = bootstrap_ratio(per_repeat["lmvision"], per_repeat["plain"], args.seed)
    loss_diff = max(repeat_diffs)
    # each side must also reproduce itself exactly from repeat to repeat
    drift = {s: max((v - losses[s][0]).abs().max().item() for v in losses[s]) for s in sides}
    busy = [c for c in other_cores if not math.isnan(c)]
    busy_median = statistics.median(busy) if busy else math.nan
    ratio_ok = ratio <= RATIO_TARGET
    loss_ok = loss_diff <= LOSS_TOLERANCE
    timing_checked = not args.quick
    threads = torch.get_num_threads()

    lines = [
        f"date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"pytorch_lightning {pl.__version__}, torchmetrics {torchmetrics.__version__}",
        machine_line(threads),
        f"settings: repeats={args.repeats} steps={args.steps} warmup={args.warmup} "
        f"batch_size={args.batch_size} num_images={args.num_images} seed={args.seed}"
        + (" (--quick)" if args.quick else ""),
        f"timed steps per side: {len(wall['plain'])} "
        f"({args.repeats} repeats x {args.steps - 1 - args.warmup})",
        f"other processes during the kept runs: {busy_median:.2f} CPU cores busy "
        f"(median over runs; max {max(busy, default=math.nan):.2f}); repeats run again "
        f"because of them: {len(discarded)}",
        "",
        "           wall-clock per step (ms)          run wall   main-thread CPU",
        "side         median      p10      p90         (s)     per step (ms)",
    ]
    for s in sides:
        lines.append(f"{s:<9} {med[s]:>9.2f} {_pct_ms(wall[s], 0.1):>8.2f} "
                     f"{_pct_ms(wall[s], 0.9):>8.2f} {statistics.median(run_wall[s]):>11.2f} "
                     f"{_ms(cpu[s]):>17.2f}")
    lines += [
        "",
        f"median step-time ratio lmvision/plain: {ratio:.4f} "
        f"({med['lmvision'] - med['plain']:+.2f} ms per step)",
        f"95% interval of that ratio (bootstrap over repeats): {ci_low:.4f} .. {ci_high:.4f}",
        f"per-repeat ratios: min {min(repeat_ratios):.4f}, median "
        f"{statistics.median(repeat_ratios):.4f}, max {max(repeat_ratios):.4f}",
        f"same ratio on main-thread CPU time: {cpu_ratio:.4f}"
        + ("" if threads == 1 else f" (misses {threads - 1} intra-op thread(s): indicative only)"),
        f"max |loss_lmvision - loss_plain| over {args.repeats} x {args.steps} steps: "
        f"{loss_diff:.3g}" + (" (bit-identical)" if loss_diff == 0 else ""),
        f"repeat-to-repeat loss drift: lmvision {drift['lmvision']:.3g}, plain {drift['plain']:.3g}",
        f"training loss (repeat 1): {losses['plain'][0][0].item():.4f} at step 1 -> "
        f"{losses['plain'][0][-1].item():.4f} at step {args.steps}",
        "",
    ]
    if busy_median > BUSY_WARNING:
        lines.append(f"WARNING: other processes kept {busy_median:.2f} cores busy; wall-clock "
                     "times are noisy, compare the CPU-time ratio")
    if timing_checked:
        lines.append(f"timing: {'PASS' if ratio_ok else 'FAIL'} "
                     f"(ratio {ratio:.4f} {'<=' if ratio_ok else '>'} {RATIO_TARGET})")
    else:
        lines.append(f"timing: NOT CHECKED with --quick (ratio {ratio:.4f}; target {RATIO_TARGET})")
    lines.append(f"losses: {'PASS' if loss_ok else 'FAIL'} "
                 f"(max diff {loss_diff:.3g} {'<=' if loss_ok else '>'} {LOSS_TOLERANCE:g})")
    lines.append(f"study time: {elapsed:.0f} s")
    summary = {
        "median_step_ms": med,
        "median_cpu_step_ms": {s: _ms(cpu[s]) for s in sides},
        "ratio": ratio,
        "ratio_95_interval": [ci_low, ci_high],
        "cpu_ratio": cpu_ratio,
        "per_repeat_ratio": repeat_ratios,
        "max_loss_diff": loss_diff,
        "loss_drift": drift,
        "other_cores_median": busy_median,
        "timing_checked": timing_checked,
        "timing_pass": ratio_ok,
        "loss_pass": loss_ok,
        "pass": loss_ok and (ratio_ok or not timing_checked),
        "step_times_s": wall,
        "cpu_step_times_s": cpu,
        "threads": threads,
        "discarded_repeats_other_cores": discarded,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    return lines, summary


def write_readme(lines: list[str], command: str) -> None:
    """Replace the text between the results markers of README.md with this run's report."""
    text = README.read_text()
    if RESULTS_START not in text or RESULTS_END not in text:
        raise SystemExit(f"{README} has no {RESULTS_START} ... {RESULTS_END} section")
    head, rest = text.split(RESULTS_START, 1)
    _, tail = rest.split(RESULTS_END, 1)
    block = "\n".join([
        RESULTS_START,
        "<!-- written by `run.py --write-readme`; edits here are overwritten -->",
        f"Command: `{command}`",
        "",
        "```text",
        *lines,
        "```",
        RESULTS_END,
    ])
    README.write_text(head + block + tail)


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
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for both sides (default: torch's own default, "
                        "what `python -m lmvision.train` runs with)")
    p.add_argument("--max-other-cores", type=float, default=0.25,
                   help="run a repeat again when other processes kept more CPU cores than this "
                        "busy during it (at most --repeats times in all)")
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
    # process-wide settings changed here are put back afterwards (main may be called in-process)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # what Trainer(deterministic=True) sets, for both
    print(f"overhead study: {args.repeats} repeats x {args.steps} steps, batch {args.batch_size}, "
          f"{args.threads} thread(s)", flush=True)
    try:
        with warnings.catch_warnings():
            quiet_lightning()
            lines, summary = study(args)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    print()
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.write_readme:
        given = argv if argv is not None else sys.argv[1:]
        write_readme(lines, " ".join(["python experiments/overhead/run.py", *given]))
        print(f"wrote the results section of {README}")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
