"""The captioner speed study's hand-written decoding loop (experiments/captioner/decoding.py:
greedy, beam search and nucleus sampling, with and without the KV cache), and that the
product's decoding (Hugging Face ``generate``, :func:`lmvision.nn.captioner.generate_after`,
what ``Captioner.generate`` runs) gives the same captions as that loop with and without the
cache."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lmvision.nn.captioner import generate_after


def _load_study_decoding():
    path = Path(__file__).resolve().parents[1] / "experiments" / "captioner" / "decoding.py"
    spec = importlib.util.spec_from_file_location("captioner_study_decoding", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_study = _load_study_decoding()
CausalStep, beam_search, decode = _study.CausalStep, _study.beam_search, _study.decode

PAD, BOS, EOS, A, B = range(5)


class Bigram(nn.Module):
    """A hand-written causal LM whose next-token distribution depends only on the last token,
    with a legacy tuple cache (the transformers 4.x layout) that holds the tokens read."""

    def __init__(self, table: dict[int, list[float]]) -> None:
        super().__init__()
        self.embedding = nn.Embedding(5, 5)
        self.embedding.weight.data = torch.eye(5)
        self.logits = torch.full((5, 5), -30.0)
        for token, probs in table.items():
            self.logits[token] = torch.tensor(probs).log()
        self.reads: list[int] = []

    def get_input_embeddings(self):
        return self.embedding

    def forward(self, inputs_embeds, attention_mask=None, past_key_values=None, use_cache=False):
        self.reads.append(inputs_embeds.shape[1])
        seen = inputs_embeds.argmax(-1)  # (B, L) token ids
        if past_key_values is not None:
            seen = torch.cat([past_key_values[0][0], seen], 1)
        assert attention_mask.shape == seen.shape  # the mask spans cache and new tokens
        cache = ((seen, seen),) if use_cache else None
        return SimpleNamespace(logits=self.logits[seen], past_key_values=cache)


# After BOS: A is likelier than B; but A rarely ends well, B almost surely ends next.
TABLE = {BOS: [0, 0, 0, 0.55, 0.45], A: [0, 0, 0.3, 0.35, 0.35], B: [0, 0, 0.95, 0.025, 0.025]}


def start(batch: int = 1) -> torch.Tensor:
    return torch.eye(5)[BOS].repeat(batch, 1, 1)  # (B, 1, 5): the "prefix" is BOS alone


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_finds_what_greedy_misses_hand_checked(use_cache):
    model = Bigram(TABLE)
    step, embed = CausalStep(model), model.get_input_embeddings()
    greedy = decode(step, start(), embed, EOS, PAD, max_new=2, use_cache=use_cache)
    # greedy: A (0.55), then A or B (0.35 each; argmax takes the first)
    assert greedy.tolist() == [[A, A]]
    beam = beam_search(step, start(), embed, EOS, PAD, max_new=2, num_beams=2,
                       use_cache=use_cache)
    # "B EOS": log(0.45 * 0.95) / 2 = -0.425 beats "A EOS" (-0.90) and "A A" (-0.82)
    assert beam.tolist() == [[B, EOS]]
    assert math.log(0.45 * 0.95) / 2 > max(math.log(0.55 * 0.3), math.log(0.55 * 0.35)) / 2


def test_without_the_cache_every_step_reads_the_whole_sequence():
    for use_cache, reads in ((True, [1, 1, 1]), (False, [1, 2, 3])):
        model = Bigram({BOS: [0, 0, 0, 1, 0], A: [0, 0, 0, 1, 0]})
        out = decode(CausalStep(model), start(), model.get_input_embeddings(), EOS, PAD,
                     max_new=3, use_cache=use_cache)
        assert out.tolist() == [[A, A, A]] and model.reads == reads


def test_min_length_holds_the_end_back_and_ended_rows_are_padded():
    model = Bigram({BOS: [0, 0, 0.9, 0.1, 0], A: [0, 0, 0.9, 0.1, 0]})
    step, embed = CausalStep(model), model.get_input_embeddings()
    assert decode(step, start(), embed, EOS, PAD, max_new=5).tolist() == [[EOS]]
    assert decode(step, start(), embed, EOS, PAD, max_new=5, min_new=2).tolist() == [[A, A, EOS]]
    two = torch.cat([start(), torch.eye(5)[A].view(1, 1, 5)])  # second row starts after A
    model2 = Bigram({BOS: [0, 0, 0.9, 0.1, 0], A: [0, 0, 0.1, 0.9, 0]})
    out = decode(CausalStep(model2), two, embed, EOS, PAD, max_new=3)
    assert out.tolist() == [[EOS, PAD, PAD], [A, A, A]]


def test_gpt2_greedy_and_beam_agree_with_and_without_the_cache_and_one_beam_is_greedy():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=8, n_positions=32, n_embd=16, n_layer=2,
                                       n_head=2, initializer_range=0.5, bos_token_id=1,
                                       eos_token_id=4, pad_token_id=0)).eval()
    step, embed = CausalStep(model), model.get_input_embeddings()
    embeds = torch.randn(5, 3, 16)
    with torch.no_grad():
        greedy = {c: decode(step, embeds, embed, 4, 0, max_new=10, use_cache=c)
                  for c in (True, False)}
        beam = {c: beam_search(step, embeds, embed, 4, 0, max_new=10, num_beams=3, use_cache=c)
                for c in (True, False)}
        one_beam = beam_search(step, embeds, embed, 4, 0, max_new=10, num_beams=1)
    assert torch.equal(greedy[True], greedy[False]) and torch.equal(beam[True], beam[False])
    assert torch.equal(one_beam, greedy[True])
    ended = (greedy[True] == 4).any(1)
    assert ended.any() and not ended.all()  # rows end at different steps


def test_nucleus_sampling_is_seeded_and_stays_in_the_nucleus():
    model = Bigram({BOS: [0, 0, 0.05, 0.6, 0.35], A: [0, 0, 0.05, 0.6, 0.35],
                    B: [0, 0, 0.05, 0.6, 0.35]})
    step, embed = CausalStep(model), model.get_input_embeddings()

    def sample(seed: int, top_p: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return decode(step, start(64), embed, EOS, PAD, max_new=6, greedy=False, top_p=top_p,
                      generator=g)

    assert torch.equal(sample(3, 0.9), sample(3, 0.9))
    assert set(sample(3, 0.9).unique().tolist()) <= {A, B}  # EOS (5%) is outside the 0.9 nucleus
    assert set(sample(3, 0.5).unique().tolist()) == {A}  # A alone (0.6) reaches 0.5


def tiny_gpt2(seed: int):
    """A small GPT-2 built from a config (as ``build_decoder`` does), whose large initial
    weights make captions end at different lengths; BOS 1, EOS 2, padding 0."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=6, n_positions=32, n_embd=32, n_layer=2,
                                      n_head=2, initializer_range=0.5, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0)).eval()


def after_bos(model, prefix: torch.Tensor) -> torch.Tensor:
    """The prefix followed by BOS's embedding: what the hand loop continues."""
    bos = model.get_input_embeddings()(torch.ones(prefix.shape[0], 1, dtype=torch.long))
    return torch.cat([prefix, bos], 1)


def test_the_same_captions_as_hugging_face_generate_greedy_and_beam():
    """The product's decoding (``generate_after``: Hugging Face's ``generate``, with its cache)
    gives exactly the hand loop's output, with and without the cache: the same tokens, the end
    token, padding after it (the pad id is 0, which ``generate``'s beam search would fill with
    EOS) and the same length; over models where captions end at different lengths, with and
    without ``min_new``."""
    lengths = set()
    for seed in range(8):
        model = tiny_gpt2(seed)
        step, embed = CausalStep(model), model.get_input_embeddings()
        prefix = torch.randn(4, 3, 32)
        embeds = after_bos(model, prefix)
        min_new = 2 * (seed % 2)  # EOS held back for 2 tokens on odd seeds
        with torch.no_grad():
            for decoding in ("greedy", "beam"):
                product = generate_after(model, prefix, 1, 2, 0, max_new=10, decoding=decoding,
                                         min_new=min_new, num_beams=3)
                for use_cache in (True, False):
                    hand = (decode(step, embeds, embed, 2, 0, max_new=10, min_new=min_new,
                                   use_cache=use_cache) if decoding == "greedy"
                            else beam_search(step, embeds, embed, 2, 0, max_new=10, num_beams=3,
                                             min_new=min_new, use_cache=use_cache))
                    assert torch.equal(product, hand), (seed, decoding, use_cache)
                ended = product == 2
                lengths.update((ended.long().argmax(1) + 1).masked_fill(~ended.any(1), 0)
                               .tolist())
    assert len(lengths - {0}) >= 3 and 0 in lengths  # ended at several lengths, and unended rows


def test_product_nucleus_sampling_draws_what_the_hand_loop_draws():
    """With the same seed, ``generate_after``'s nucleus sampling (temperature, top-p, no top-k)
    draws the hand loop's tokens: both filter alike and draw one multinomial sample per row
    and step from the global generator."""
    for seed in range(4):
        model = tiny_gpt2(seed)
        prefix = torch.randn(4, 3, 32)
        step, embed = CausalStep(model), model.get_input_embeddings()
        with torch.no_grad():
            torch.manual_seed(100 + seed)
            product = generate_after(model, prefix, 1, 2, 0, max_new=10, decoding="nucleus",
                                     top_p=0.8, temperature=0.7, min_new=1)
            torch.manual_seed(100 + seed)
            hand = decode(step, after_bos(model, prefix), embed, 2, 0, max_new=10, min_new=1,
                          greedy=False, top_p=0.8, temperature=0.7)
        assert torch.equal(product, hand), seed


def test_a_pretrained_decoders_generation_config_does_not_change_the_captions():
    """A hub model's ``generation_config`` (sampling, penalties, beams, a short max_length) is
    overridden: greedy and beam captions stay the hand loop's."""
    from transformers import GenerationConfig

    model = tiny_gpt2(3)
    model.generation_config = GenerationConfig(
        do_sample=True, top_k=2, temperature=0.3, repetition_penalty=1.5, no_repeat_ngram_size=2,
        max_length=5, num_beams=2, length_penalty=2.0, early_stopping=True)
    prefix = torch.randn(4, 3, 32)
    step, embed, embeds = CausalStep(model), model.get_input_embeddings(), after_bos(model, prefix)
    with torch.no_grad():
        assert torch.equal(generate_after(model, prefix, 1, 2, 0, max_new=10),
                           decode(step, embeds, embed, 2, 0, max_new=10))
        assert torch.equal(generate_after(model, prefix, 1, 2, 0, max_new=10, decoding="beam",
                                          num_beams=3),
                           beam_search(step, embeds, embed, 2, 0, max_new=10, num_beams=3))


def test_a_wrapped_decoder_that_passes_keyword_arguments_on_keeps_its_cache():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=8, n_positions=32, n_embd=16, n_layer=1,
                                       n_head=2)).eval()

    class Wrapper(nn.Module):  # forwards everything, as PEFT's and compiled models do
        def __init__(self):
            super().__init__()
            self.inner, self.reads = model, []

        def forward(self, **kwargs):
            self.reads.append(kwargs["inputs_embeds"].shape[1])
            return self.inner(**kwargs)

    wrapped = Wrapper()
    embeds = torch.randn(2, 3, 16)
    with torch.no_grad():
        out = decode(CausalStep(wrapped), embeds, model.get_input_embeddings(), 7, 0, max_new=4,
                     min_new=4)
        direct = decode(CausalStep(model), embeds, model.get_input_embeddings(), 7, 0,
                        max_new=4, min_new=4)
    assert torch.equal(out, direct) and wrapped.reads == [3, 1, 1, 1]
