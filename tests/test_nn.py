"""The encoder API (forward, tokens, out_dim) of every backbone, and the heads."""

from __future__ import annotations

import pytest
import torch

from lmvision.nn.heads import LinearHead, MLPHead
from lmvision.nn.image_encoders import SmallCNN, SmallViT, TimmEncoder, TorchvisionEncoder


def check_encoder(encoder, channels=3, size=32):
    images = torch.randn(2, channels, size, size, requires_grad=True)
    pooled, tokens = encoder(images), encoder.tokens(images)
    assert pooled.shape == (2, encoder.out_dim)
    assert tokens.ndim == 3 and tokens.shape[0] == 2 and tokens.shape[2] == encoder.out_dim
    (pooled * torch.randn_like(pooled)).sum().backward()  # a plain sum is flat after LayerNorm
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_small_cnn(channels):
    check_encoder(SmallCNN(in_channels=channels, widths=(8, 16), out_dim=24), channels)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {}),
    ("resnet18", {"small_input": True}),
    ("mobilenet_v3_small", {}),
    ("vit_b_16", {"image_size": 32}),
])
def test_torchvision_models_by_name(name, kwargs):
    size = kwargs.pop("image_size", 32)
    encoder = TorchvisionEncoder(name, in_channels=1, image_size=size, **kwargs)
    check_encoder(encoder, channels=1, size=size)


def test_torchvision_unknown_name_is_a_clear_error():
    # the argument is named as the constructor calls it (built from a config: backbone.name,
    # tests/test_errors.py)
    with pytest.raises(ValueError, match=r"^name='resnet_999': not a torchvision model"):
        TorchvisionEncoder("resnet_999")


def test_small_vit_tokens_include_class_token():
    vit = SmallViT(image_size=16, patch_size=4, dim=32, depth=2, heads=4)
    check_encoder(vit, size=16)
    assert vit.tokens(torch.randn(1, 3, 16, 16)).shape == (1, 17, 32)
    with pytest.raises(ValueError, match=r"^image_size=30: not a multiple of patch_size=4"):
        SmallViT(image_size=30, patch_size=4)


def test_timm_models_by_name():
    pytest.importorskip("timm")
    check_encoder(TimmEncoder("resnet18", in_channels=3))
    with pytest.raises(ValueError, match=r"^name='no_such_model_anywhere': not a timm model"):
        TimmEncoder("no_such_model_anywhere")


@pytest.mark.parametrize("head", [LinearHead(16, 5), MLPHead(16, 5, hidden_dim=8)])
def test_heads(head):
    out = head(torch.randn(3, 16))
    assert out.shape == (3, 5)


@pytest.mark.parametrize("mode,dropout,text,fusion", [
    ("fused", 0.5, "scratch", "concat"), ("fused", 0.0, "scratch", "cross_attention"),
    ("image_only", 0.0, "scratch", "concat"), ("text_only", 0.0, "scratch", "concat"),
    ("fused", 0.3, "pretrained", "gated"),  # MiniLM trained (freeze=none): its pooler is unused
])
def test_every_parameter_of_a_fusion_network_gets_a_gradient(mode, dropout, text, fusion):
    """DDP (find_unused_parameters=False) stops on a parameter that a step does not use."""
    from lmvision.nn import fusions
    from lmvision.nn.classifiers import FusionClassifier
    from lmvision.nn.text_encoders import pretrained, scratch_bert
    from lmvision.text.hub import minilm_path
    from lmvision.text.side import TextSide
    from lmvision.text.tokenizers import PretrainedTokenizer, WordPieceTokenizer

    if text == "scratch":
        tokenizer = WordPieceTokenizer(vocab_size=60)(["a red circle", "a blue cross or a square"])
        encoder = scratch_bert(tokenizer, dim=16, depth=1, heads=2, intermediate_size=16)
    else:
        tokenizer = PretrainedTokenizer(minilm_path())()
        encoder = pretrained(tokenizer, minilm_path(), freeze="none")
    fusion_class = {"concat": fusions.ConcatFusion, "gated": fusions.GatedFusion,
                    "cross_attention": fusions.CrossAttentionFusion}[fusion]
    text_side = TextSide("text", tokenizer, make_encoder=lambda tokenizer: encoder)
    net = FusionClassifier(SmallCNN(widths=(8,), out_dim=8), text_side, fusion_class, LinearHead,
                           num_classes=3, mode=mode, modality_dropout=dropout)
    enc = tokenizer(["a red circle", "a blue cross"], padding=True, return_tensors="pt")
    logits = net({"image": torch.randn(2, 3, 16, 16), "text_ids": enc["input_ids"],
                  "text_mask": enc["attention_mask"]})
    logits.sum().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    assert (net.image_encoder is None) == (mode == "text_only")
    assert (net.text_encoder is None) == (mode == "image_only")
