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

Sampling time for 256-token images, batch 1 and 64, with the KV cache and without it (every
step re-reads the whole sequence), with greedy decoding (the two give the same tokens), the
median of three runs after a warm-up run (one run for batch 64 without the cache), for the
trained size above and, batch 1 only, for larger ones (dim 256 and 512, depth 8): the cache
saves compute, which grows with the model and the sequence, while a cached step at batch 1 is a
matrix-vector product per weight, bound by reading the weights and by dispatch cost.
On a GPU, also tokens/s and model FLOPs utilisation (MFU) of a GPT of about 100 M parameters in
bf16 (FLOPs per token 6N + 12·L·T·d, as in the PaLM appendix; peak from ``--peak-tflops``).
"""

from __future__ import annotations

import argparse
import sys
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


def train_rate(model, forward, batch: int, steps: int, device: str, dtype=None) -> float:
    """Pixel tokens per second of forward + backward + AdamW steps (median step time)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
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

    config = GPT2Config(vocab_size=COLORS + 1, n_positions=PIXELS, n_embd=dim, n_layer=depth,
                        n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config, attn_implementation=attention).to(device) \
        if _takes_attn(GPT2LMHeadModel) else GPT2LMHeadModel(config).to(device)
    bos = torch.full((1, 1), COLORS, device=device)

    def forward(tokens):
        ids = torch.cat([bos.expand(len(tokens), 1), tokens[:, :-1]], 1)
        return model(input_ids=ids).logits[..., :COLORS]

    return model, forward


def _takes_attn(cls) -> bool:
    import inspect

    return "attn_implementation" in inspect.signature(cls.__init__).parameters


def sampling_seconds(model, batch: int, use_cache: bool, device: str, repeats: int) -> float:
    """Median wall time of generating ``batch`` whole images, after one untimed warm-up run."""
    model.eval()
    prefix = model.prefix(batch=batch, device=device)

    def sample() -> None:
        model.generate(prefix, greedy=True, use_cache=use_cache)
        sync(device)

    return studies.median_seconds(sample, repeats, warmup=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="GPU bf16 dense peak for MFU (default: H100/H200 SXM 989)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.dim, args.depth, args.steps, args.batch = 32, 2, 2, 4
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = (args.dim, args.depth, args.heads)

    rates: dict[str, float | str] = {}
    kinds = [("PixelGPT, sdpa", own, "sdpa"), ("PixelGPT, naive", own, "naive"),
             ("HF GPT-2, sdpa", hugging_face, "sdpa"), ("HF GPT-2, eager", hugging_face, "eager")]
    for name, build, attention in kinds[::2] if args.quick else kinds:  # quick: one of each
        model, forward = build(*size, attention, device)
        rates[name] = train_rate(model, forward, args.batch, args.steps, device)
        print(f"{name:28s} {rates[name]:>12,.0f} tokens/s", flush=True)
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

    sampling = {}
    sizes = [size, *([(32, 2, 4)] if args.quick else [(256, 8, 8), (512, 8, 8)])]
    batches = (1, 4) if args.quick else (1, 64)
    for dim, depth, heads in sizes:
        sampler, _ = own(dim, depth, heads, "sdpa", device)
        for batch in batches if (dim, depth, heads) == size else batches[:1]:
            for use_cache in (True, False):
                key = (dim, depth, batch, use_cache)
                repeats = 1 if args.quick or (batch > 1 and not use_cache) else 3
                sampling[key] = sampling_seconds(sampler, batch, use_cache, device, repeats)
                print(f"sampling dim {dim} depth {depth}, batch {batch:3d}, KV cache "
                      f"{use_cache!s:5s}: {sampling[key]:.2f} s", flush=True)

    gpu_lines = ["- No GPU on this machine: no bf16 / MFU figures (run the script on one)."]
    if device == "cuda":
        dim, depth, heads = 768, 14, 12  # ~100 M parameters
        model, forward = own(dim, depth, heads, "sdpa", device)
        params = sum(p.numel() for p in model.parameters())
        rate = train_rate(model, forward, 64, args.steps, device, dtype=torch.bfloat16)
        flops = 6 * params + 12 * depth * (PIXELS + 1) * dim
        peak = (args.peak_tflops or 989.0) * 1e12
        mfu = rate * flops / peak
        gpu_lines = [f"- GPU {torch.cuda.get_device_name(0)}: PixelGPT with {params / 1e6:.0f} M "
                     f"parameters (dim {dim}, depth {depth}), bf16 autocast, batch 64: "
                     f"{rate:,.0f} tokens/s, MFU {100 * mfu:.1f} % of {peak / 1e12:.0f} TFLOPS"]

    own_rate, hf_rate = rates["PixelGPT, sdpa"], rates["HF GPT-2, sdpa"]
    speedups = {(d, l): sampling[(d, l, 1, False)] / sampling[(d, l, 1, True)] for d, l, _ in sizes}
    rows = [f"| {name} | {rate:,.0f} | {rate / own_rate:.2f} |" if isinstance(rate, float)
            else f"| {name} | {rate} | — |" for name, rate in rates.items()]
    lines = [
        f"{studies.environment_line()} Model: dim {args.dim}, depth {args.depth}, heads "
        f"{args.heads}; batch {args.batch} images of 256 pixel tokens; median of {args.steps} "
        f"steps. Command: `python experiments/pixel_lm_speed/run.py --write-readme`.", "",
        "| training (forward + backward + AdamW) | pixel tokens / s | vs PixelGPT sdpa |",
        "|---|---|---|", *rows, "",
        "| sampling 256-token images (greedy) | with KV cache | without | speed-up |",
        "|---|---|---|---|",
        *[f"| dim {d}, depth {l}, batch {b} | {sampling[(d, l, b, True)]:.2f} s | "
          f"{sampling[(d, l, b, False)]:.2f} s | "
          f"{sampling[(d, l, b, False)] / sampling[(d, l, b, True)]:.1f}× |"
          for d, l, _ in sizes for b in batches if (d, l, b, True) in sampling], "",
        *gpu_lines, "",
        *[f"- {'PASS' if x >= 5 else 'FAIL'}: dim {d}, depth {l}: sampling with the KV cache "
          f"≥ 5× faster than without, batch 1 ({x:.1f}×)" for (d, l), x in speedups.items()],
        f"- choice: lmvision's PixelGPT ({own_rate:,.0f} tokens/s) "
        f"{'is' if own_rate >= hf_rate else 'is NOT'} at least as fast as Hugging Face GPT-2 "
        f"({hf_rate:,.0f} tokens/s) here",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        studies.write_results(HERE / "README.md", text)
    return 0 if all(x >= 5 for x in speedups.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
