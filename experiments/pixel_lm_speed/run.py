"""Pixel-LM speed study: which transformer, which attention, compiled or not, and what the KV
cache buys when sampling. Writes README.md's results.

    .venv/bin/python experiments/pixel_lm_speed/run.py --write-readme      # ~5 min on 2 CPU cores
    .venv/bin/python experiments/pixel_lm_speed/run.py --quick             # a smoke run

Training throughput (pixel tokens per second, forward + backward + AdamW step, median of
timed steps after warm-up), on 16x16 images (256 pixel tokens) over a 16-colour palette:

* lmvision's ``PixelGPT`` with ``scaled_dot_product_attention`` (``attention=sdpa``), the same
  with the textbook softmax(QKᵀ/√d)V (``attention=naive``), and with ``torch.compile`` where
  it works here;
* a Hugging Face ``GPT2LMHeadModel`` of the same size built from a ``GPT2Config`` (its own
  ``sdpa`` and ``eager`` attention): the baseline the compact module is chosen against.

Sampling time for 256-token images, batch 1 and 64, with the KV cache, with it and its step
compiled by ``torch.compile`` (``generate(compile_step=True)``), and without the cache (every
step re-reads the whole sequence), with greedy decoding (all give the same tokens): after a
warm-up run of each (which compiles, and on a GPU captures the step's graph), the three
alternate, and each figure is the median of five (batch 64: three, one without the cache), for
the trained size above and, batch 1 only, for larger ones (dim 256 and 512, depth 8): the
cache saves compute, which grows with the model and the sequence, while a cached step at
batch 1 is a matrix-vector product per weight, bound by reading the weights and by dispatch
cost. On a GPU the cached step is replayed as a CUDA graph (``PixelGPT.generate``), and the
script also times the kept graph's replay alone per token. ``--profile-step`` prints the
kernels of the cached step instead (where a replay's time goes).
On a GPU, also tokens/s and model FLOPs utilisation (MFU) of GPTs of about 100 M parameters
(dim 768 x 14 blocks, and dim 1024 x 8 blocks) in bf16 autocast with fused AdamW, eager and
under ``torch.compile``, at batch 64 and 128 images (16k and 33k tokens a step). FLOPs per
token are 6N + 12·L·T·d (N all parameters, L blocks, T = 256 tokens, d the width: the PaLM
appendix's count, attention not halved for causality); MFU divides the FLOPs done per second by
the card's dense bf16 peak (989 TFLOPS for an H100/H200 SXM, or ``--peak-tflops``). The
ceiling a large bf16 matrix product reaches on the same card is measured and printed beside
it. GPU results go to the README's own GPU sections (training and sampling; MFU), so the CPU
table stays, and ``--skip-mfu`` / ``--mfu-only`` re-measure one GPU part and keep the other.

Checks (``PASS:`` / ``FAIL:`` lines; the exit status is 1 if any printed check fails, else 0):
greedy sampling gives the same tokens with the cache, with its compiled step and without the
cache, in every run (warm-up and timed, every size and batch); sampling with the cache, and
with its compiled step, is at least 5x as fast as without at batch 1, for each size; and, where
the MFU table is made, the best MFU is at least 40 %. ``--quick`` runs every part on toy models
(dim 32 and 48, depth 2, one timed run each, the MFU code at dim 32): it judges the tokens, and
prints the two timing targets as ``SKIPPED in --quick`` with their figures, since a toy model
timed once says nothing about them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmvision.nn.pixel_gpt import PixelGPT

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import studies  # noqa: E402  (experiments/studies.py)

COLORS, PIXELS = 16, 256


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_rate(model, forward, batch: int, steps: int, device: str, dtype=None,
               fused: bool = False) -> float:
    """Pixel tokens per second of forward + backward + AdamW steps (median step time)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))
    tokens = torch.randint(COLORS, (batch, PIXELS), device=device)

    def step() -> None:
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            logits = forward(tokens)
            loss = F.cross_entropy(logits.reshape(-1, COLORS).float(), tokens.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)

    # 3 warm-up steps (and compilation) are not timed
    return batch * PIXELS / studies.median_seconds(step, steps, warmup=3)


def own(dim, depth, heads, attention, device):
    model = PixelGPT(COLORS, PIXELS, dim=dim, depth=depth, heads=heads, attention=attention).to(device)
    prefix = model.prefix(batch=1, device=device)

    def forward(tokens):
        return model.pixel_logits(prefix.expand(len(tokens), -1), tokens)

    return model, forward


def hugging_face(dim, depth, heads, attention, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmvision.compat import attention_implementation

    config = GPT2Config(vocab_size=COLORS + 1, n_positions=PIXELS, n_embd=dim, n_layer=depth,
                        n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        attn_implementation=attention)
    model = GPT2LMHeadModel(config).to(device)
    given = attention_implementation(model)
    if given != attention:  # never time one attention under another's name
        raise RuntimeError(f"transformers gave {given} attention")
    bos = torch.full((1, 1), COLORS, device=device)

    def forward(tokens):
        ids = torch.cat([bos.expand(len(tokens), 1), tokens[:, :-1]], 1)
        return model(input_ids=ids).logits[..., :COLORS]

    return model, forward


# how each sampling column calls PixelGPT.generate
SAMPLERS = {"cache": {"use_cache": True}, "compiled": {"use_cache": True, "compile_step": True},
            "plain": {"use_cache": False}}


def sampling_seconds(model, batch: int, device: str, repeats: int,
                     plain_repeats: int | None = None) -> tuple[dict[str, float], list[str]]:
    """Median wall time of generating ``batch`` whole images with the KV cache (``cache``), with
    it and the step compiled (``compiled``), and without the cache (``plain``), after one
    untimed warm-up run of each (which compiles); the timed runs alternate, so a slow spell of
    a shared machine weighs on all alike. Also the kinds whose greedy tokens, in any run,
    differ from those of the warm-up run without the cache (the textbook computation)."""
    model.eval()
    prefix = model.prefix(batch=batch, device=device)
    tokens: dict[str, list[torch.Tensor]] = {kind: [] for kind in SAMPLERS}

    def sample(kind: str) -> float:
        start = time.perf_counter()
        tokens[kind].append(model.generate(prefix, greedy=True, **SAMPLERS[kind]))
        sync(device)
        return time.perf_counter() - start

    for kind in SAMPLERS:
        sample(kind)
    times: dict[str, list[float]] = {kind: [] for kind in SAMPLERS}
    plain_repeats = repeats if plain_repeats is None else plain_repeats
    for i in range(repeats):
        for kind in SAMPLERS:
            if kind != "plain" or i < plain_repeats:
                times[kind].append(sample(kind))
    reference = tokens["plain"][0]
    differ = [kind for kind, runs in tokens.items()
              if not all(torch.equal(run, reference) for run in runs)]
    return {kind: statistics.median(t) for kind, t in times.items()}, differ


def replay_microseconds(model, device: str, compiled: bool) -> float:
    """Microseconds per token of replaying the kept CUDA graph of the cached step alone, 255
    times as in an image (no token chosen, nothing written): what a step costs the GPU plus
    the replay's launch, against which the whole sampling loop's time per token is read."""
    from lmvision.nn.pixel_gpt import cuda_graph_replay

    replay = cuda_graph_replay(model, compiled)
    token = torch.zeros(1, dtype=torch.long, device=device)

    def image() -> None:
        with torch.inference_mode():  # as in PixelGPT.generate, whose tensors the graph holds
            for at in range(1, PIXELS):
                replay(token, at)
        sync(device)

    return studies.median_seconds(image, 5, warmup=1) / (PIXELS - 1) * 1e6


def profile_step(dim: int, depth: int, heads: int, device: str, steps: int = 20) -> None:
    """Print the kernels of ``steps`` cached sampling steps at batch 1 (eager and compiled, run
    without the graph, so the profiler sees each kernel) with their time on the device:
    which kernels a graph replay spends its time on."""
    from torch.profiler import ProfilerActivity, profile

    from lmvision.nn.pixel_gpt import KVCache

    model = own(dim, depth, heads, "sdpa", device)[0].eval()
    cache = KVCache(depth, 1, heads, model.max_length, dim // heads, torch.device(device),
                    torch.float32)
    token = torch.zeros(1, dtype=torch.long, device=device)
    for compiled in (False, True):
        step = torch.compile(model.step, fullgraph=True, dynamic=False) if compiled else model.step
        with torch.inference_mode():
            for at in range(3):  # warm-up (and compilation)
                step(token, torch.tensor([at], device=device), cache)
            sync(device)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
            with profile(activities=activities) as prof:
                for at in range(steps):
                    step(token, torch.tensor([at], device=device), cache)
                sync(device)
        key = "device_time_total" if device == "cuda" else "cpu_time_total"
        print(f"\nProfile of {steps} cached steps, dim {dim}, depth {depth}, batch 1, "
              f"{'compiled' if compiled else 'eager'}:")
        print(prof.key_averages().table(sort_by=key, row_limit=22, max_name_column_width=60))


# about 100 M parameters, deep and narrow or shallow and wide: (batch, torch.compile) runs of each
MFU_RUNS = {(768, 14, 12): [(64, False), (128, False), (128, True)],
            (1024, 8, 16): [(128, False), (128, True)]}


def matmul_tflops(device: str, n: int = 8192) -> float:
    """bf16 TFLOP/s of an n x n x n matrix product (median of 5 timings of 10 products): the
    ceiling the card reaches here, measured beside the MFU."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))

    def ten() -> None:
        for _ in range(10):
            a @ b
        sync(device)

    return 10 * 2 * n ** 3 / studies.median_seconds(ten, 5, warmup=1) / 1e12


def mfu_rows(device: str, runs: dict, steps: int, peak: float) -> list[dict]:
    """Training tokens/s and MFU of each model size x (batch, compiled), bf16 autocast and fused
    AdamW; a run that fails (out of memory, no compiler) is reported, not hidden."""
    rows = []
    for (dim, depth, heads), model_runs in runs.items():
        for batch, compiled in model_runs:
            torch.compiler.reset()  # each compiled run traces its own shapes afresh
            row = {"dim": dim, "depth": depth, "batch": batch, "compiled": compiled}
            model = forward = step = None
            try:
                model, forward = own(dim, depth, heads, "sdpa", device)
                row["params"] = sum(p.numel() for p in model.parameters())
                step = torch.compile(forward) if compiled else forward
                rate = train_rate(model, step, batch, steps, device, dtype=torch.bfloat16, fused=True)
                flops = 6 * row["params"] + 12 * depth * PIXELS * dim  # per token
                row.update(tokens_per_s=rate, tflops=rate * flops / 1e12, mfu=rate * flops / peak)
            except Exception as err:  # noqa: BLE001 - reported in the table
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            finally:
                model = forward = step = None
                if device == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"MFU {row}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="GPU bf16 dense peak for MFU (default: H100/H200 SXM 989)")
    parser.add_argument("--mfu-only", action="store_true", help="only the GPU MFU table")
    parser.add_argument("--skip-mfu", action="store_true",
                        help="no GPU MFU table (the README keeps the one it has)")
    parser.add_argument("--profile-step", action="store_true",
                        help="only print the kernels of the cached sampling step (batch 1)")
    parser.add_argument("--quick", action="store_true",
                        help="toy models, one run each: checks the tokens, judges no timing")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.dim, args.depth, args.steps, args.batch = 32, 2, 2, 4
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = (args.dim, args.depth, args.heads)
    if args.profile_step:
        profile_step(*size, device)
        return 0
    header = [f"{studies.environment_line()} Command: `python experiments/pixel_lm_speed/run.py "
              f"{' '.join(sys.argv[1:])}`.", ""]
    mfu_lines = None  # the GPU MFU table: its own README section, so each part can be re-run alone
    if (device == "cuda" or args.quick) and not args.skip_mfu:  # first, as only a GPU gives it
        peak = (args.peak_tflops or 989.0) * 1e12  # --quick: the code on a toy model
        ceiling = matmul_tflops(device, 256 if args.quick else 8192)
        print(f"bf16 matrix product: {ceiling:.0f} TFLOP/s", flush=True)
        runs = {(32, 2, 4): [(4, False)]} if args.quick else MFU_RUNS
        rows = mfu_rows(device, runs, 2 if args.quick else max(args.steps, 20), peak)
        mfu_lines = header + mfu_table(rows, peak, ceiling, args.quick)
    lines = None
    if not args.mfu_only:
        lines = header + speed_tables(args, size, device)
        if device != "cuda":
            lines.append("- No GPU on this machine: no bf16 / MFU figures (run the script on one).")
    for section, part in (("gpu-mfu", mfu_lines), ("gpu" if device == "cuda" else "results", lines)):
        if part is None:
            continue
        text = "\n".join(part)
        print(text)
        if args.write_readme and (device == "cuda" or section != "gpu-mfu"):
            studies.write_results(HERE / "README.md", text, section)
    # the exit status follows the checks printed: 1 if any failed (a skipped one counts for nothing)
    return 1 if any(line.startswith("- FAIL:") for part in (mfu_lines, lines) if part
                    for line in part) else 0


def verdict(ok: bool, quick: bool = False) -> str:
    """A check's word: PASS or FAIL, or, for a timing target that ``--quick`` does not judge,
    SKIPPED (the line then says why)."""
    return "SKIPPED in --quick" if quick else "PASS" if ok else "FAIL"


# why --quick judges no timing target: its figures come from toy models timed once
QUICK_TIMING = ("; not judged: toy models timed once, and the target is set for the full "
                "run's sizes and repeats, which judge it")


def mfu_table(rows: list[dict], peak: float, ceiling: float, quick: bool = False) -> list[str]:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    out = [f"Training a ~100 M-parameter PixelGPT on {device}: bf16 autocast, fused AdamW, "
           f"256 tokens per image, median of the timed steps. MFU = model FLOPs per second / "
           f"{peak / 1e12:.0f} TFLOPS (dense bf16 peak); a bf16 8192³ matrix product reaches "
           f"{ceiling:.0f} TFLOP/s on this card.", "",
           "| model | parameters | batch (images) | torch.compile | tokens / s | TFLOP/s | MFU |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"dim {r['dim']}, depth {r['depth']}"
        params = f"{r['params'] / 1e6:.0f} M" if "params" in r else "—"
        if "error" in r:
            out.append(f"| {name} | {params} | {r['batch']} | {r['compiled']} | fails: "
                       f"{r['error']} | — | — |")
        else:
            out.append(f"| {name} | {params} | {r['batch']} | {'yes' if r['compiled'] else 'no'} | "
                       f"{r['tokens_per_s']:,.0f} | {r['tflops']:.0f} | {100 * r['mfu']:.1f} % |")
    done = [r for r in rows if "mfu" in r]
    if done:
        best = max(done, key=lambda r: r["mfu"])
        out += ["", f"- {verdict(best['mfu'] >= 0.4, quick)}: MFU ≥ 40 % for a ~100 M GPT in "
                f"bf16: best {100 * best['mfu']:.1f} % (dim {best['dim']}, depth {best['depth']}, "
                f"batch {best['batch']}, compiled {'yes' if best['compiled'] else 'no'}"
                + ("; not judged: the MFU code run on a toy model, not a ~100 M GPT on a GPU)"
                   if quick else ")")]
    return out


def speed_tables(args, size, device) -> list[str]:
    """The training-throughput and sampling tables, and their checks: the same greedy tokens
    from every sampler, and the batch-1 KV-cache speed-ups (not judged with ``--quick``)."""
    rates: dict[str, float | str] = {}
    kinds = [("PixelGPT, sdpa", own, "sdpa"), ("PixelGPT, naive", own, "naive"),
             ("HF GPT-2, sdpa", hugging_face, "sdpa"), ("HF GPT-2, eager", hugging_face, "eager")]
    for name, build, attention in kinds[::2] if args.quick else kinds:  # quick: one of each
        try:
            model, forward = build(*size, attention, device)
            rates[name] = train_rate(model, forward, args.batch, args.steps, device)
        except Exception as err:  # noqa: BLE001 - reported, not hidden
            rates[name] = f"fails here ({type(err).__name__}: {str(err).splitlines()[0][:80]})"
        print(f"{name:28s} {rates[name]}", flush=True)
    try:
        if args.quick:
            raise RuntimeError("not timed with --quick")
        model, forward = own(*size, "sdpa", device)
        compiled = torch.compile(forward)
        rates["PixelGPT, sdpa, torch.compile"] = train_rate(model, compiled, args.batch,
                                                            args.steps, device)
    except Exception as err:  # noqa: BLE001 - reported, not hidden: compile needs a toolchain
        rates["PixelGPT, sdpa, torch.compile"] = f"fails here ({type(err).__name__})"
    print(f"{'PixelGPT, sdpa, torch.compile':28s} {rates['PixelGPT, sdpa, torch.compile']}", flush=True)

    sampling, replays, mismatches = {}, {}, []
    sizes = [size, *([(48, 2, 4)] if args.quick else [(256, 8, 8), (512, 8, 8)])]
    batches = (1, 4) if args.quick else (1, 64)
    for dim, depth, heads in sizes:
        sampler, _ = own(dim, depth, heads, "sdpa", device)
        for batch in batches if (dim, depth, heads) == size else batches[:1]:
            repeats = 1 if args.quick else 5 if batch == 1 else 3
            times, differ = sampling_seconds(sampler, batch, device, repeats,
                                             1 if batch > 1 else None)
            mismatches += [f"dim {dim} depth {depth} batch {batch}: {kind}" for kind in differ]
            for kind, seconds in times.items():
                sampling[(dim, depth, batch, kind)] = seconds
                print(f"sampling dim {dim} depth {depth}, batch {batch:3d}, {kind:8s}: "
                      f"{seconds:.3f} s", flush=True)
            if device == "cuda" and batch == 1:  # the graphs kept by the runs above
                try:
                    replays[(dim, depth)] = {kind: replay_microseconds(sampler, device, compiled)
                                             for kind, compiled in (("cache", False),
                                                                    ("compiled", True))}
                except KeyError as err:  # no graph was kept (capture failed): reported
                    print(f"replay alone, dim {dim} depth {depth}: no kept graph {err}", flush=True)
                else:
                    print(f"replay alone, dim {dim} depth {depth}: {replays[(dim, depth)]}",
                          flush=True)

    own_rate, hf_rate = rates["PixelGPT, sdpa"], rates["HF GPT-2, sdpa"]
    speedups = {(d, l, kind): sampling[(d, l, 1, "plain")] / sampling[(d, l, 1, kind)]
                for d, l, _ in sizes for kind in ("cache", "compiled")}
    rows = [f"| {name} | {rate:,.0f} | {rate / own_rate:.2f} |" if isinstance(rate, float)
            else f"| {name} | {rate} | — |" for name, rate in rates.items()]
    compare = (f"- choice: lmvision's PixelGPT ({own_rate:,.0f} tokens/s) "
               f"{'is' if own_rate >= hf_rate else 'is NOT'} at least as fast as Hugging Face "
               f"GPT-2 ({hf_rate:,.0f} tokens/s) here") \
        if isinstance(hf_rate, float) else f"- Hugging Face GPT-2: {hf_rate}"
    if args.quick and isinstance(hf_rate, float):  # no claim from a toy model's few steps
        compare = (f"- choice: not judged in --quick (toy model, {args.steps} timed steps): "
                   f"PixelGPT {own_rate:,.0f} tokens/s, Hugging Face GPT-2 {hf_rate:,.0f}")
    lines = [
        f"Model: dim {args.dim}, depth {args.depth}, heads {args.heads}; batch {args.batch} "
        f"images of 256 pixel tokens, float32; median of {args.steps} steps.", "",
        "| training (forward + backward + AdamW) | pixel tokens / s | vs PixelGPT sdpa |",
        "|---|---|---|", *rows, "",
        "| sampling 256-token images (greedy) | KV cache | KV cache, compiled step | without "
        "cache | speed-up: cache | speed-up: cache, compiled step |",
        "|---|---|---|---|---|---|",
        *[f"| dim {d}, depth {l}, batch {b} | {sampling[(d, l, b, 'cache')]:.3f} s | "
          f"{sampling[(d, l, b, 'compiled')]:.3f} s | {sampling[(d, l, b, 'plain')]:.3f} s | "
          f"{sampling[(d, l, b, 'plain')] / sampling[(d, l, b, 'cache')]:.1f}× | "
          f"{sampling[(d, l, b, 'plain')] / sampling[(d, l, b, 'compiled')]:.1f}× |"
          for d, l, _ in sizes for b in batches if (d, l, b, "cache") in sampling], "",
        (f"- {'FAIL' if mismatches else 'PASS'}: greedy sampling gives the same tokens with the "
         "KV cache, with its compiled step and without the cache, in every run above"
         + (f" (differ from the uncached tokens: {'; '.join(mismatches)})" if mismatches else "")),
        *[f"- {verdict(x >= 5, args.quick)}: dim {d}, depth {l}: sampling with the KV cache"
          f"{', compiled step,' if kind == 'compiled' else ''} ≥ 5× faster than without, "
          f"batch 1 ({x:.1f}×{QUICK_TIMING if args.quick else ''})"
          for (d, l, kind), x in speedups.items()],
        compare, ""]
    if replays:
        def per_token(d: int, l: int, kind: str) -> float:  # µs of a batch-1 image's loop
            return sampling[(d, l, 1, kind)] / (PIXELS - 1) * 1e6

        lines[-1:-1] = [
            "", "| per token, batch 1 (µs) | whole loop: cache | graph replay alone | whole loop: "
            "cache, compiled step | compiled graph replay alone | without cache |",
            "|---|---|---|---|---|---|",
            *[f"| dim {d}, depth {l} | {per_token(d, l, 'cache'):.0f} | {r['cache']:.0f} | "
              f"{per_token(d, l, 'compiled'):.0f} | {r['compiled']:.0f} | "
              f"{per_token(d, l, 'plain'):.0f} |" for (d, l), r in replays.items()]]
    return lines


if __name__ == "__main__":
    sys.exit(main())
