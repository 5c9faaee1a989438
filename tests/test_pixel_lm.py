"""Strategies `pixel_lm` and `pixel_lm_finetune`: the palette, the GPT (causality, KV cache,
attention kinds), the probe, raw pixels from the datamodule, pretraining, fine-tuning from a
pretrained run, scored generation (the `evaluation=pixel_lm` callbacks)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from lmvision.checks import ArgumentError
from lmvision.errors import UserError
from lmvision.evaluation.probes import fit_probes, folds, probe_accuracies
from lmvision.nn.palette import PaletteQuantizer
from lmvision.nn.pixel_gpt import KVCache, PixelGPT
from lmvision.train import train

PROBE = {"probe/acc_best", "probe/best_layer", "probe/acc_pixels", "probe/acc_random_init",
         "probe/cv_acc_best", "probe/cv_acc_pixels", "probe/cv_acc_random_init"}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def images_of(colours: torch.Tensor, n: int = 40, size: int = 6, seed: int = 0) -> torch.Tensor:
    """Images whose pixels take only the given colours (K, C)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(len(colours), (n, size, size), generator=g)
    return colours[index].permute(0, 3, 1, 2)  # (n, C, size, size)


@pytest.mark.parametrize("channels", [1, 3])
def test_palette_round_trip_seed_and_persistence(channels, tmp_path):
    colours = torch.rand(8, channels, generator=torch.Generator().manual_seed(channels))
    images = images_of(colours)
    quantizer = PaletteQuantizer(8, channels).fit(images, seed=3)
    tokens = quantizer.encode(images)
    assert tokens.shape == (40, 36) and tokens.dtype == torch.long
    assert torch.allclose(quantizer.decode(tokens, 6), images, atol=1e-5)  # every colour found
    again = PaletteQuantizer(8, channels).fit(images, seed=3)
    assert torch.equal(again.palette, quantizer.palette)
    torch.save(quantizer.state_dict(), tmp_path / "palette.pt")
    restored = PaletteQuantizer(8, channels)
    restored.load_state_dict(torch.load(tmp_path / "palette.pt", weights_only=True))
    assert bool(restored.fitted) and torch.equal(restored.encode(images), tokens)


def test_palette_errors():
    with pytest.raises(ArgumentError, match=r"^num_colors=1: expected a whole number, at least 2$"):
        PaletteQuantizer(1, 3)
    with pytest.raises(ArgumentError, match=r"^channels=2: choose one of 1, 3$"):
        PaletteQuantizer(4, 2)
    with pytest.raises(UserError, match="at least as many"):
        PaletteQuantizer(64, 1).fit(torch.rand(1, 1, 4, 4))
    with pytest.raises(RuntimeError, match="fit the palette"):
        PaletteQuantizer(4, 1).encode(torch.rand(1, 1, 4, 4))


def tiny_gpt(attention: str = "sdpa", **kwargs) -> PixelGPT:
    gpt = PixelGPT(12, 36, dim=32, depth=2, heads=4, attention=attention, **kwargs)
    gpt.reset_parameters(7)
    return gpt.eval()


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_a_token_never_sees_the_future(attention):
    gpt = tiny_gpt(attention, num_classes=3)
    pixels = torch.randint(12, (2, 36))
    prefix = gpt.prefix(torch.tensor([0, 2]))
    logits = gpt.pixel_logits(prefix, pixels)
    changed = pixels.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 12
    other = gpt.pixel_logits(prefix, changed)
    assert torch.allclose(logits[:, :21], other[:, :21])  # logit i predicts pixel i from < i
    assert not torch.allclose(logits[:, 21:], other[:, 21:])


def test_sdpa_and_naive_attention_agree():
    sdpa, naive = tiny_gpt("sdpa"), tiny_gpt("naive")
    pixels = torch.randint(12, (3, 36))
    prefix = sdpa.prefix(batch=3)
    assert torch.allclose(sdpa.pixel_logits(prefix, pixels), naive.pixel_logits(prefix, pixels),
                          atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_cached_and_uncached_sampling_give_the_same_tokens(attention):
    gpt = tiny_gpt(attention, num_classes=2, caption_tokens=3, text_vocab_size=10)
    prefix = gpt.prefix(torch.tensor([1, -1]), torch.tensor([[4, 5, 0], [0, 0, 0]]))
    for known in (None, torch.randint(12, (2, 18))):
        cached = gpt.generate(prefix, known=known, greedy=True, use_cache=True)
        plain = gpt.generate(prefix, known=known, greedy=True, use_cache=False)
        assert torch.equal(cached, plain)
        if known is not None:
            assert torch.equal(cached[:, :18], known)
    # sampling follows its generator
    a = gpt.generate(prefix, generator=torch.Generator().manual_seed(1), top_k=5, top_p=0.9)
    b = gpt.generate(prefix, generator=torch.Generator().manual_seed(1), top_k=5, top_p=0.9)
    assert torch.equal(a, b)


def test_the_compiled_step_samples_what_the_uncached_model_samples():
    """``compile_step=True`` runs the fixed-shape step through torch.compile (here on the CPU:
    called as it is; on a GPU: inside the CUDA graph, the test below)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    gpt = tiny_gpt("sdpa", num_classes=2)
    prefix = gpt.prefix(torch.tensor([1, -1]))
    known = torch.randint(12, (2, 18), generator=torch.Generator().manual_seed(0))
    compiled = gpt.generate(prefix, known=known, greedy=True, compile_step=True)
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert torch.equal(compiled, gpt.generate(prefix, known=known, greedy=True, use_cache=False))
    null = gpt.prefix(None, batch=2)  # guided: both passes in one batch of 4 rows
    assert torch.equal(gpt.generate(prefix, greedy=True, guidance=2.0, null_prefix=null,
                                    compile_step=True),
                       gpt.generate(prefix, greedy=True, guidance=2.0, null_prefix=null,
                                    use_cache=False))


def test_guided_sampling_weighs_the_condition_against_no_condition():
    gpt = tiny_gpt("sdpa", num_classes=2, caption_tokens=3, text_vocab_size=10)
    with torch.no_grad():  # large embeddings and weights: conditions change what is drawn
        for p in gpt.parameters():
            p.mul_(30 if p.ndim == 2 else 1)
    prefix = gpt.prefix(torch.tensor([1, 0]), torch.tensor([[4, 5, 0], [6, 0, 0]]))
    null = gpt.prefix(None, torch.zeros(2, 3, dtype=torch.long), batch=2)
    known = torch.randint(12, (2, 18))
    # weight 0: the unconditional model alone; weight 1: the conditional model alone
    assert torch.equal(gpt.generate(prefix, greedy=True, guidance=0.0, null_prefix=null),
                       gpt.generate(null, greedy=True))
    assert not torch.equal(gpt.generate(null, greedy=True), gpt.generate(prefix, greedy=True))
    # weight 3, cached or not: the first token is the argmax of u + 3 (c - u)
    with torch.inference_mode():
        c = gpt.pixel_logits(prefix, torch.zeros(2, 36, dtype=torch.long))[:, 0]
        u = gpt.pixel_logits(null, torch.zeros(2, 36, dtype=torch.long))[:, 0]
    guided = gpt.generate(prefix, greedy=True, guidance=3.0, null_prefix=null)
    assert torch.equal(guided[:, 0], (u + 3.0 * (c - u)).argmax(-1))
    assert torch.equal(guided, gpt.generate(prefix, greedy=True, guidance=3.0, null_prefix=null,
                                            use_cache=False))
    completed = gpt.generate(prefix, known=known, greedy=True, guidance=3.0, null_prefix=null)
    assert completed.shape == (2, 36) and torch.equal(completed[:, :18], known)
    with pytest.raises(UserError, match="null_prefix"):
        gpt.generate(prefix, guidance=2.0)


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_each_cached_step_gives_the_logits_of_the_full_pass(attention):
    gpt = tiny_gpt(attention, num_classes=2)
    pixels = torch.randint(12, (2, 36))
    prefix = gpt.prefix(torch.tensor([1, -1]))
    full = gpt.pixel_logits(prefix, pixels)  # (B, 36, V): logit i predicts pixel i
    ids = gpt.inputs(prefix, pixels)
    p = prefix.shape[1]
    with torch.inference_mode():
        cache = KVCache(gpt.depth, 2, gpt.heads, gpt.max_length, gpt.dim // gpt.heads,
                        torch.device("cpu"), torch.float32)
        assert torch.allclose(gpt(ids[:, :p + 1], cache, 0)[:, -1], full[:, 0], atol=1e-5)
        for i in range(1, 36):  # one token at a time, each attending to the cache
            position = torch.tensor([p + i])
            masked = gpt.step(ids[:, p + i], position, cache)  # the whole cache, masked
            sliced = gpt(ids[:, p + i:p + i + 1], cache, p + i)[:, -1]  # the slots up to p + i
            assert torch.allclose(masked, full[:, i], atol=1e-5), i
            assert torch.allclose(sliced, full[:, i], atol=1e-5), i


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_graph_step_samples_what_the_eager_step_samples(monkeypatch):
    import gc
    import weakref

    from lmvision.nn import pixel_gpt
    from lmvision.nn.pixel_gpt import _GRAPHS

    gpt = tiny_gpt("sdpa", num_classes=2).cuda()
    prefix = gpt.prefix(torch.tensor([1, -1, 0], device="cuda"))
    known = torch.randint(12, (3, 10), device="cuda")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="PixelGPT")  # no fallback to the eager step
        graphed = gpt.generate(prefix, known=known, greedy=True)
        assert torch.equal(graphed, gpt.generate(prefix, known=known, greedy=True, use_cache=False))
        held = _GRAPHS[gpt][False]
        # the graph and cache are reused: fewer known pixels (an earlier call's slots beyond
        # the position are masked, and zeroed for the call), then none
        for given in (known[:, :4], None):
            again = gpt.generate(prefix, known=given, greedy=True)
            assert torch.equal(again, gpt.generate(prefix, known=given, greedy=True, use_cache=False))
            assert _GRAPHS[gpt][False] is held
        for compiled in (False, True):  # what an overflow would leave: zeroed for the next call
            with torch.inference_mode():  # the cache holds generate's inference tensors
                for pair in _GRAPHS[gpt][compiled][2].pairs:
                    pair.fill_(float("nan"))
            assert torch.equal(graphed, gpt.generate(prefix, known=known, greedy=True,
                                                     compile_step=compiled))
            if not compiled:  # the compiled step's graph, kept for the poisoned call after it
                assert torch.equal(graphed, gpt.generate(prefix, known=known, greedy=True,
                                                         compile_step=True))
    with torch.no_grad():  # new weights in place: the same graph reads them
        gpt.head.weight.mul_(-1)
    assert torch.equal(gpt.generate(prefix, known=known, greedy=True),
                       gpt.generate(prefix, known=known, greedy=True, use_cache=False))
    assert _GRAPHS[gpt][False] is held
    gpt.train()  # the eager step (no graph) is used in training mode
    assert torch.equal(gpt.generate(prefix, known=known, greedy=True),
                       gpt.generate(prefix, known=known, greedy=True, use_cache=False))
    gpt.eval()
    monkeypatch.setattr(pixel_gpt, "KEEP_GRAPH_BYTES", 0)  # a cache too large to keep
    wide = gpt.prefix(torch.tensor([0, 1, 0, 1], device="cuda"))
    assert torch.equal(gpt.generate(wide, greedy=True), gpt.generate(wide, greedy=True,
                                                                      use_cache=False))
    assert False not in _GRAPHS[gpt]  # freed after its call
    model = weakref.ref(gpt)
    del gpt
    gc.collect()
    assert model() is None  # the kept graph does not keep its model alive


def test_the_probe_picks_the_informative_layer_by_cross_validation():
    g = torch.Generator().manual_seed(0)

    def split(n):
        labels = torch.randint(3, (n,), generator=g)
        noise = torch.randn(2, n, 8, generator=g)
        informative = noise[1] * 0.3
        informative[:, 0] += labels.float() * 3  # layer 2 carries the label
        trained = torch.stack([noise[0], informative])
        return {"trained": trained, "random": torch.randn(2, n, 8, generator=g),
                "pixels": torch.randn(1, n, 8, generator=g), "labels": labels}

    train, val, test = split(150), split(60), split(60)
    values = fit_probes({"train": train, "val": val, "test": test})
    assert values["probe/best_layer"] == 2.0
    assert values["probe/acc_best"] == values["probe/acc_layer_2"] >= 0.9
    assert values["probe/acc_layer_1"] < 0.6 and values["probe/acc_random_init"] < 0.6
    assert values["probe/acc_pixels"] < 0.6
    # the cross-validated accuracies of the chosen probes: read on train and val alone, so
    # the same whatever the test split holds
    assert values["probe/cv_acc_best"] >= 0.9
    assert values["probe/cv_acc_random_init"] < 0.6 and values["probe/cv_acc_pixels"] < 0.6
    scrambled = fit_probes({"train": train, "val": val, "test": {
        **test, "labels": test["labels"][torch.randperm(60, generator=g)]}})
    for key in ("probe/cv_acc_best", "probe/cv_acc_pixels", "probe/cv_acc_random_init"):
        assert scrambled[key] == values[key]
    assert scrambled["probe/acc_best"] < 0.6
    # the regularisation is swept and chosen by cross-validation: a useless strength alone
    # scores chance, beside a good one the sweep finds the good one
    parts = {s: split(n) for s, n in (("train", 150), ("val", 60), ("test", 60))}
    layer = {s: part["trained"][1] for s, part in parts.items()}
    labels = {s: part["labels"] for s, part in parts.items()}
    alone = probe_accuracies(layer, labels, strengths=(1e-7,))
    swept = probe_accuracies(layer, labels, strengths=(1e-7, 1.0))
    assert alone[0] < 0.6 and swept[0] >= 0.9 and swept[1] >= 0.9


def test_the_all_layers_probe_reads_what_no_single_layer_holds():
    g = torch.Generator().manual_seed(0)

    def split(n):  # four classes: layer 1 holds the label's low bit, layer 2 its high bit
        labels = torch.randint(4, (n,), generator=g)
        trained = torch.randn(2, n, 8, generator=g) * 0.3
        trained[0, :, 0] += (labels % 2).float() * 3
        trained[1, :, 0] += (labels // 2).float() * 3
        return {"trained": trained, "random": torch.randn(2, n, 8, generator=g),
                "pixels": torch.randn(1, n, 8, generator=g), "labels": labels}

    values = fit_probes({"train": split(200), "val": split(80), "test": split(80)})
    assert values["probe/acc_layer_1"] < 0.65 and values["probe/acc_layer_2"] < 0.65
    assert values["probe/acc_all_layers"] >= 0.9
    assert values["probe/acc_random_init_all_layers"] < 0.5


PROBE_THREADS = """
import json, threading, torch
from threadpoolctl import threadpool_info
from lmvision.evaluation import probes

seen = []
fit = probes._fit


def recording(x, y, c):
    seen.append((threading.get_ident() == main, sorted({p["num_threads"] for p in threadpool_info()})))
    return fit(x, y, c)


probes._fit, probes.JOBS, probes.PARALLEL_MIN_ITEMS = recording, 2, 42
main = threading.get_ident()
g = torch.Generator().manual_seed(0)


def split(n):
    labels = torch.arange(n) % 3
    return {"trained": torch.randn(1, n, 4, generator=g) + labels[:, None].float(),
            "random": torch.randn(1, n, 4, generator=g),
            "pixels": torch.randn(1, n, 4, generator=g), "labels": labels}


probes.fit_probes({"train": split(30), "val": split(12), "test": split(12)})
probes.fit_probes({"train": split(30), "val": split(11), "test": split(12)})  # 41: too few
print(json.dumps(seen))
"""


def test_probe_fits_run_on_one_thread_each_side_by_side(tmp_path):
    """Each fit sees every BLAS and OpenMP pool limited to one thread (beside PyTorch's they
    would fight over the cores), and the cross-validation fits run off the calling thread from
    probes.PARALLEL_MIN_ITEMS train and val items; below it, all on the calling thread. In a
    fresh process with the libraries' default threads (not the test workers' one), where
    scikit-learn's libraries load only when the probes start."""
    result = run_cli(["-c", PROBE_THREADS], cwd=tmp_path,
                     env={"OMP_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": None})
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    assert all(threads == [1] for _, threads in seen), seen
    parallel, small = seen[:5 * 16], seen[5 * 16:]
    # per probe: 5 strengths x 3 folds off the calling thread, then the refit on it
    assert sum(not on_main for on_main, _ in parallel) == 5 * 15
    assert len(small) == 5 * 16 and all(on_main for on_main, _ in small)

def test_probe_folds_are_stratified_over_train_and_val_or_the_given_split():
    train, val = np.repeat([0, 1, 2], 10), np.repeat([0, 1, 2], 4)
    pairs = folds(train, val)
    assert len(pairs) == 3
    held_out = np.concatenate([b for _, b in pairs])
    assert sorted(held_out) == list(range(42))  # every item is scored once
    labels = np.concatenate([train, val])
    for fit, scored in pairs:
        assert not set(fit) & set(scored) and set(labels[scored]) == {0, 1, 2}
    # a class with fewer items than folds (a few tested batches): the train/val split as given
    few = folds(np.array([0, 1, 1]), np.array([0, 1]))
    assert [(list(a), list(b)) for a, b in few] == [([0, 1, 2], [3, 4])]


def test_the_datamodule_serves_raw_pixels_when_asked(make_cfg):
    from lmvision.run.parts import build_parts

    for strategy in ("pixel_lm", "pixel_lm_finetune"):  # inputs= is chosen with the strategy
        assert make_cfg(f"strategy={strategy}").inputs.pixels == "raw"
    cfg = make_cfg("strategy=pixel_lm", "data=digits", "data.image_size=8")
    datamodule, text, _ = build_parts(cfg, {}, {})
    assert text is None and datamodule.tokenizer is None  # pixels alone
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    raw = torch.stack([datamodule.dataset[int(i)]["image"] for i in batch["index"]]).float() / 255
    assert torch.allclose(batch["image"], raw)  # no normalisation, no augmentation

    cfg = make_cfg("strategy=pixel_lm", "data=digits", "data.image_size=8",
                   "inputs.pixels=raw_augmented")
    datamodule, _, _ = build_parts(cfg, {}, {})
    kinds = [type(t).__name__ for t in datamodule.train_transform.transforms]
    assert kinds == ["ToDtype", "RandomAffine"]  # digits' geometric augmentation, no Normalize


@pytest.mark.slow
def test_pretrain_then_finetune_from_its_weights(make_cfg, tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    pretrained = train(make_cfg("experiment=pixel_lm_digits", "logger=csv", "debug=limit",
                                "evaluation.samples.images=4",
                                "evaluation.sampling.compile=true", output_dir=tmp_path / "pre"))
    assert counters["stats"]["unique_graphs"] >= 1  # the grids were sampled by the compiled step
    assert PROBE | {"test/bits_per_dim", "val/bits_per_dim_best"} <= set(pretrained)
    assert pretrained["test/bits_per_dim"] < 4.0  # a uniform guess over 16 colours is 4 bits
    assert sorted(p.name for p in (tmp_path / "pre" / "figures").glob("samples_*.png")) == [
        "samples_completion.png", "samples_unconditional.png"]
    last = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    palette = checkpoint["state_dict"]["net.palette.palette"]
    assert bool(checkpoint["state_dict"]["net.palette.fitted"])

    tuned = train(make_cfg("experiment=pixel_lm_digits", "logger=csv", "debug=limit",
                           "strategy=pixel_lm_finetune", f"init_from={last}",
                           output_dir=tmp_path / "fine"))
    assert {"test/acc", "test/bits_per_dim", "val/acc_best"} <= set(tuned)
    assert not PROBE & set(tuned)
    loaded = read(tmp_path / "fine" / "run.json")["init_from"]
    assert loaded["missing"] == ["head.bias", "head.weight"]  # only the new head starts afresh
    best = read(tmp_path / "fine" / "run.json")["checkpoints"]["best"]
    state = torch.load(best, weights_only=True, map_location="cpu")["state_dict"]
    assert torch.equal(state["net.palette.palette"], palette)  # the pretrained palette is kept


def test_conditional_generation_is_scored_by_a_classifier(make_cfg, tmp_path):
    train(make_cfg("data.image_size=16", "data.colors=distinct", "data.num_images=300",
                   "logger=csv", "debug=limit", output_dir=tmp_path / "judge"))
    judge = tmp_path / "judge" / "checkpoints" / "last.ckpt"
    metrics = train(make_cfg("experiment=pixel_lm_shapes", "data.num_images=300", "logger=csv",
                             "debug=fdr", f"evaluation.generation.judge={judge}",
                             "evaluation.generation.samples_per_class=2", "evaluation.probe=null",
                             "evaluation.sampling.guidance=2.0", output_dir=tmp_path / "lm"))
    assert 0.0 <= metrics["gen/acc"] <= 1.0 and 0.0 <= metrics["gen/acc_caption"] <= 1.0
    names = sorted(p.name for p in (tmp_path / "lm" / "figures").glob("samples_*.png"))
    assert names == ["samples_caption.png", "samples_class.png", "samples_completion.png",
                     "samples_unconditional.png"]
    with pytest.raises(UserError, match="evaluation.generation.judge=.*: it was trained with "
                                        "data.image_size=16, this run has 32"):
        train(make_cfg("strategy=pixel_lm", "data.num_images=300", "logger=csv", "debug=fdr",
                       f"evaluation.generation.judge={judge}", output_dir=tmp_path / "bad"))


@pytest.mark.parametrize("overrides, match", [
    (["strategy.net.classify=true"], "^strategy.net: pretraining reads no class head"),
    (["strategy=pixel_lm_finetune", "strategy.net.classify=false"],
     "^strategy.net: fine-tuning needs a network with a head"),
    (["strategy.net.conditions=[colour]"],
     "^strategy.net.conditions: 'colour' is not one of class, caption$"),
    (["strategy.net.dim=30"], "^strategy.net.dim=30: must be a multiple of heads=4$"),
    (["evaluation.sampling.guidance=2"],
     "^evaluation.sampling.guidance=2.*only for a model with conditions"),
    (["inputs.pixels=raw_augmented", ("data.datamodule.augment=[{_target_: "
      "torchvision.transforms.v2.ColorJitter, brightness: 0.3}]")],
     "^data.datamodule.augment: ColorJitter may change colours"),
])
def test_errors_before_training(make_cfg, overrides, match, monkeypatch):
    from lmvision.strategies.base import Strategy

    def never(*args, **kwargs):
        raise AssertionError("the run started training before refusing the option")

    monkeypatch.setattr(Strategy, "training_step", never)
    monkeypatch.setattr(Strategy, "validation_step", never)  # the sanity check's batches
    with pytest.raises(UserError, match=match):
        train(make_cfg("strategy=pixel_lm", "data=digits", "data.image_size=8", "logger=csv",
                       "debug=fdr", *overrides))
