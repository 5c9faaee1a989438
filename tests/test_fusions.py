"""Fusion modules: named inputs, output shapes, gradients to both modalities, masking."""

from __future__ import annotations

import pytest
import torch

from lmvision.nn.fusions import ConcatFusion, CrossAttentionFusion, FiLMFusion, GatedFusion

B, N, L, DI, DT = 3, 5, 7, 12, 10


def inputs():
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 4:] = 0  # the first text is shorter
    return {
        "image": torch.randn(B, DI, requires_grad=True),
        "image_tokens": torch.randn(B, N, DI, requires_grad=True),
        "text": torch.randn(B, DT, requires_grad=True),
        "text_tokens": torch.randn(B, L, DT, requires_grad=True),
        "text_mask": mask,
    }


FUSIONS = [
    ConcatFusion(DI, DT, hidden_dim=16),
    GatedFusion(DI, DT, dim=16),
    FiLMFusion(DI, DT, hidden_dim=16),
    CrossAttentionFusion(DI, DT, dim=16, heads=2),
    CrossAttentionFusion(DI, DT, dim=16, heads=2, depth=2, both_ways=True),
]


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: type(f).__name__ + str(f.out_dim))
def test_shapes_and_gradients_reach_both_modalities(fusion):
    torch.manual_seed(0)
    fusion.train()
    x = inputs()
    out = fusion(x)
    assert out.shape == (B, fusion.out_dim)
    (out * torch.randn_like(out)).sum().backward()
    image_key, text_key = ("image_tokens", "text_tokens") if fusion.needs_tokens else ("image", "text")
    if isinstance(fusion, FiLMFusion):  # gamma/beta start at zero: text gets gradient via film weights
        assert fusion.film.weight.grad.abs().sum() > 0
    else:
        assert x[text_key].grad.abs().sum() > 0
    assert x[image_key].grad.abs().sum() > 0


def test_cross_attention_ignores_padded_text_tokens():
    fusion = CrossAttentionFusion(DI, DT, dim=16, heads=2, both_ways=True).eval()
    x = inputs()
    before = fusion(x)
    x["text_tokens"] = x["text_tokens"].detach().clone()
    x["text_tokens"][0, 4:] = 100.0  # change only padding of the first example
    after = fusion(x)
    assert torch.allclose(before[0], after[0], atol=1e-5)
    assert torch.allclose(before[1:], after[1:], atol=1e-5)
