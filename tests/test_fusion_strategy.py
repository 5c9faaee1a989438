"""Strategy `fusion` end to end: every mode, fusion module and text encoder option, the frozen
text cache, modality dropout and the no-text test metric."""

from __future__ import annotations

import json

import pytest

from lmvision.errors import UserError
from lmvision.nn import feature_cache
from lmvision.train import train

BASE = ["experiment=fusion_shapes", "logger=csv", "data.num_images=300"]


@pytest.mark.parametrize("mode", ["fused", "image_only", "text_only"])
def test_each_mode_trains_and_reports_acc_no_text(make_cfg, mode):
    metrics = train(make_cfg(*BASE, "debug=fdr", f"strategy.net.mode={mode}"))
    assert {"test/acc", "test/acc_no_text", "test/f1_macro"} <= set(metrics)
    if mode == "image_only":  # no text is used, so removing it changes nothing
        assert metrics["test/acc_no_text"] == metrics["test/acc"]


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["concat", "gated", "cross_attention", "film"])
def test_each_fusion_module_learns(make_cfg, fusion):
    """Four short epochs of each fusion on color_shape (24 classes): far above chance (1/24;
    each reached 0.475-0.55 here). (Whether fusing beats each modality alone is measured by
    experiments/fusion.)"""
    metrics = train(make_cfg(*BASE, "data.num_images=1000", "trainer.max_epochs=4",
                             "callbacks.progress_bar.refresh_rate=0", f"fusion={fusion}",
                             "strategy.net.modality_dropout=0.3"))
    assert metrics["test/acc"] >= 0.35, metrics


def test_scratch_text_encoder_trains_its_tokenizer_into_the_run_dir(make_cfg, tmp_path):
    train(make_cfg(*BASE, "debug=fdr", "text_encoder=scratch", "fusion=cross_attention"))
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()


def test_hf_text_encoder_from_a_local_tiny_bert(make_cfg, tmp_path):
    from transformers import BertConfig, BertModel

    from lmvision.text.hub import minilm_path
    from lmvision.text.tokenizers import PretrainedTokenizer

    tokenizer = PretrainedTokenizer(minilm_path())()
    path = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    for freeze in ("none", "all_but_last_n"):
        metrics = train(make_cfg(*BASE, "debug=fdr", "text_encoder=hf", f"text_encoder.freeze={freeze}",
                                 f"text_encoder.name_or_path={path}",
                                 output_dir=tmp_path / f"run-{freeze}"))
        assert "test/acc" in metrics


def test_frozen_text_features_are_computed_once_per_run(make_cfg, monkeypatch):
    """The network caches a frozen encoder's features on first use (``cached_text``)."""
    built = []
    original = feature_cache.TextFeatureCache.__init__

    def counting(self, *args, **kwargs):
        built.append(len(args[2]))
        original(self, *args, **kwargs)

    monkeypatch.setattr(feature_cache.TextFeatureCache, "__init__", counting)
    train(make_cfg(*BASE, "debug=limit", "trainer.max_epochs=2"))
    assert built == [300]  # once for the whole dataset, not per epoch or per split


def test_test_examples_table_is_written(make_cfg, tmp_path):
    train(make_cfg(*BASE, "debug=fdr"))
    rows = json.loads((tmp_path / "run" / "figures" / "test_examples.json").read_text())
    assert rows and set(rows[0]) == {"text", "label", "prediction"}
    assert " " in rows[0]["label"]  # color_shape class names such as "red circle"


def test_fusion_without_text_encoder_is_a_clear_error(make_cfg, tmp_path):
    """Fusion reads text with a text encoder: a run without one stops before training, in one
    line naming what is missing."""
    from omegaconf import open_dict

    cfg = make_cfg(*BASE, output_dir=tmp_path / "deleted")
    with open_dict(cfg):
        del cfg["text_encoder"]
    with pytest.raises(UserError, match=r"^inputs.text.tokenizer: .*'text_encoder.tokenizer' not found"):
        train(cfg)
    with pytest.raises(UserError, match=r"no text encoder \(inputs.text.encoder\)$"):
        train(make_cfg(*BASE, "inputs.text.encoder=null", output_dir=tmp_path / "null"))
    with pytest.raises(UserError, match=r"^strategy.net: FusionClassifier reads text, and "
                                        r"inputs=image_classifier gives none"):
        train(make_cfg(*BASE, "inputs=image_classifier", output_dir=tmp_path / "no_text"))
    assert not list(tmp_path.rglob("*.ckpt"))


def test_bad_mode_is_named(make_cfg):
    from lmvision.config.build import group_choices
    from lmvision.run.parts import build_parts

    with pytest.raises(UserError, match=r"^strategy.net.mode='both': choose one of fused, "
                                        r"image_only, text_only$"):
        build_parts(make_cfg(*BASE, "strategy.net.mode=both"), {}, group_choices())


@pytest.mark.parametrize("fusion_name", ["concat", "cross_attention"])
def test_hidden_text_is_really_hidden(fusion_name):
    """With text hidden, the prediction does not depend on the text at all (pooled and tokens)."""
    import torch

    from lmvision.nn import fusions
    from lmvision.nn.classifiers import FusionClassifier
    from lmvision.nn.heads import LinearHead
    from lmvision.nn.image_encoders import SmallCNN
    from lmvision.nn.text_encoders import scratch_bert
    from lmvision.text.side import TextSide
    from lmvision.text.tokenizers import WordPieceTokenizer

    tokenizer = WordPieceTokenizer(vocab_size=100)(["a red circle", "a blue cross", "green or teal"])
    fusion = {"concat": fusions.ConcatFusion, "cross_attention": fusions.CrossAttentionFusion}[fusion_name]
    model = FusionClassifier(   # the plain network, no Lightning
        image_encoder=SmallCNN(widths=(8,), out_dim=16),
        text=TextSide("text", tokenizer, make_encoder=lambda tokenizer: scratch_bert(
            tokenizer, dim=16, depth=1, heads=2, intermediate_size=32)),
        fusion=fusion, head=LinearHead, num_classes=3, modality_dropout=0.5).eval()
    images = torch.randn(2, 3, 16, 16)

    def batch(texts):
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        return {"image": images, "label": torch.zeros(2, dtype=torch.long),
                "text_ids": enc["input_ids"], "text_mask": enc["attention_mask"]}

    a, b = batch(["a red circle", "a blue cross"]), batch(["green or teal", "a red circle a red circle"])
    hidden = torch.zeros(2, dtype=torch.bool)
    assert torch.allclose(model(a, hidden), model(b, hidden), atol=1e-6)
    assert not torch.allclose(model(a), model(b), atol=1e-4)
    model.train()  # modality dropout draws which texts to hide: some batches differ from eval
    torch.manual_seed(0)
    drawn = [model(a).detach() for _ in range(8)]
    assert any(not torch.allclose(drawn[0], d) for d in drawn[1:])


def test_eval_rebuilds_a_fusion_checkpoint(make_cfg, tmp_path):
    from lmvision.evaluate import evaluate

    trained = train(make_cfg(*BASE, "debug=limit", "trainer.limit_test_batches=1.0",
                             "fusion=gated", output_dir=tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt_path={last}"]
    metrics = evaluate(make_cfg(*overrides, config_name="eval", output_dir=tmp_path / "e"))
    assert set(trained) >= {"test/acc", "test/acc_no_text"}
    assert {"test/acc", "test/acc_no_text"} <= set(metrics)


def test_wandb_gets_the_examples_table(make_cfg, tmp_path):
    """An offline W&B run holds the test-time table (image, text, label, prediction)."""
    train(make_cfg("experiment=fusion_shapes", "data.num_images=300", "debug=limit",
                   "logger=wandb", "logger.wandb.mode=offline"))
    tables = list((tmp_path / "run" / "wandb").glob("offline-run-*/files/media/table/**/*.table.json"))
    assert tables, "no W&B table was written"
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["image", "text", "label", "prediction"] and table["data"]


def test_eval_of_a_scratch_text_checkpoint_uses_the_stored_tokenizer(make_cfg, tmp_path):
    """A tokenizer learned on the split travels in the checkpoint: eval encodes as training did.

    (Learning it again would not do: WordPiece training breaks ties differently each time.)"""
    from lmvision.evaluate import evaluate

    trained = train(make_cfg(*BASE, "debug=limit", "trainer.limit_test_batches=1.0",
                             "text_encoder=scratch", output_dir=tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt_path={last}"]
    metrics = evaluate(make_cfg(*overrides, config_name="eval", output_dir=tmp_path / "e"))
    assert not (tmp_path / "e" / "tokenizer").exists()  # not learned again
    assert metrics["test/acc"] == trained["test/acc"]
    assert metrics["test/loss"] == pytest.approx(trained["test/loss"], abs=1e-6)
