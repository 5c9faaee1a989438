"""Decoding of a causal LM after input embeddings (`lmvision.nn.decoding`): greedy, beam
search and nucleus sampling, with and without the KV cache."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lmvision.nn.decoding import CausalStep, beam_search, decode

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


def test_the_same_captions_as_hugging_face_generate_greedy_and_beam():
    """Hugging Face's ``generate`` (with its cache) as the reference: the same tokens up to
    the end token, over models where captions end at different lengths."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def upto_end(ids: torch.Tensor) -> list[list[int]]:
        return [row[:row.index(2) + 1] if 2 in row else row for row in ids.tolist()]

    for seed in range(8):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=6, n_positions=32, n_embd=32, n_layer=2,
                                           n_head=2, initializer_range=0.5, bos_token_id=1,
                                           eos_token_id=2, pad_token_id=0)).eval()
        step, embed = CausalStep(model), model.get_input_embeddings()
        embeds = torch.randn(4, 3, 32)
        settings = {"inputs_embeds": embeds, "attention_mask": torch.ones(4, 3, dtype=torch.long),
                    "max_new_tokens": 10, "min_new_tokens": 2, "do_sample": False,
                    "eos_token_id": 2, "pad_token_id": 0}
        with torch.no_grad():
            for beams in (1, 3):
                ours = (decode(step, embeds, embed, 2, 0, max_new=10, min_new=2) if beams == 1
                        else beam_search(step, embeds, embed, 2, 0, max_new=10, num_beams=3,
                                         min_new=2, use_cache=False))
                theirs = model.generate(num_beams=beams, **settings)
                assert upto_end(ours) == upto_end(theirs), (seed, beams)


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
