"""Strategy `aux_text`: the prototype network, training, zero-shot metrics, explanations, the
descriptions stored with the run, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from lmvision.errors import UserError
from lmvision.evaluate import evaluate
from lmvision.nn.image_encoders import SmallCNN
from lmvision.nn.prototypes import PrototypeClassifier
from lmvision.text.descriptions import Descriptions
from lmvision.text.hub import minilm_path
from lmvision.text.side import TextSide
from lmvision.text.tokenizers import PretrainedTokenizer
from lmvision.train import train

ZERO_SHOT = {"test/acc_seen", "test/acc_unseen", "test/acc_hm", "test/acc_unseen_zsl"}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


TEXTS = ["cat: pointy ears", "cat: whiskers", "dog: floppy ears", "bird: feathers", "bird: a beak"]
OWNERS = [0, 0, 1, 2, 2]
CLASSES = ("cat", "dog", "bird")


@pytest.fixture(scope="module")
def minilm():
    """``text(freeze)``: a text side with the packaged MiniLM (frozen or tuned) and the
    descriptions above, as the run session makes it."""
    from functools import partial

    from lmvision.nn.text_encoders import pretrained

    tokenizer = PretrainedTokenizer(minilm_path())()
    by_class = {c: [t for t, o in zip(TEXTS, OWNERS) if o == k] for k, c in enumerate(CLASSES)}

    def text(freeze: str) -> TextSide:
        return TextSide("text", tokenizer,
                        make_encoder=partial(pretrained, name_or_path=minilm_path(), freeze=freeze),
                        descriptions=Descriptions(by_class), classes=CLASSES)

    return text


@pytest.mark.parametrize("scoring", ["mean_prototype", "mean_score"])
def test_scores_are_cosines_with_prototypes_or_mean_description_scores(minilm, scoring):
    torch.manual_seed(0)
    net = PrototypeClassifier(SmallCNN(in_channels=3), minilm("all"), scoring=scoring,
                              init_temperature=0.5).eval()
    assert net.description_texts == TEXTS and net.description_owners.tolist() == OWNERS
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        logits = net({"image": images})
        image = net.image_features(images)
        text = net.description_features()
    assert logits.shape == (4, 3)
    assert torch.allclose(image.norm(dim=1), torch.ones(4)) and torch.allclose(text.norm(dim=1), torch.ones(5))
    owners = torch.tensor(OWNERS)
    if scoring == "mean_prototype":
        prototypes = F.normalize(torch.stack([text[owners == k].mean(0) for k in range(3)]), dim=1)
        expected = image @ prototypes.T
    else:
        expected = torch.stack([(image @ text[owners == k].T).mean(1) for k in range(3)], dim=1)
    assert torch.allclose(logits, 2.0 * expected, atol=1e-5)  # temperature 0.5


def test_a_frozen_text_encoder_encodes_the_descriptions_once(minilm):
    calls = []
    net = PrototypeClassifier(SmallCNN(in_channels=3), minilm("all"))
    net.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    for _ in range(3):
        net({"image": torch.randn(2, 3, 16, 16)}).sum().backward()
    assert len(calls) == 1
    assert all(p.grad is None for p in net.text_encoder.parameters())
    assert net.projection.weight.grad is not None and net.logit_scale.grad is not None


def test_a_tuned_text_encoder_learns_from_the_image_loss(minilm):
    net = PrototypeClassifier(SmallCNN(in_channels=3), minilm("none"), learn_temperature=False)
    F.cross_entropy(net({"image": torch.randn(2, 3, 16, 16)}), torch.tensor([0, 2])).backward()
    grads = [p.grad for p in net.text_encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert "logit_scale" not in dict(net.named_parameters())


@pytest.mark.slow
def test_zero_shot_run_records_descriptions_explanations_and_beats_chance(make_cfg, tmp_path):
    """A short real run: unseen colour-shape combinations are recognised from their
    descriptions far above chance (1 in 6 among the unseen classes)."""
    out = tmp_path / "run"
    metrics = train(make_cfg("experiment=aux_text_shapes", "data.num_images=3000",
                             "trainer.max_epochs=5", "logger=csv",
                             "callbacks.progress_bar.refresh_rate=0"))
    assert ZERO_SHOT <= set(metrics)
    assert metrics["test/acc_seen"] >= 0.7, metrics
    assert metrics["test/acc_unseen_zsl"] >= 0.4, metrics
    record = read(out / "run.json")
    assert record["descriptions"]["source"] == "file"
    assert record["descriptions"]["path"].endswith("shapes_color_shape.yaml")
    assert len(record["class_split"]["unseen_classes"]) == 6
    stored = read(out / "descriptions.json")
    assert stored["by_class"]["red circle"][0].startswith("red circle: ")
    explained = read(out / "figures" / "test_explanations.json")
    assert len(explained) == 32
    for row in explained:
        parts = row["because"].split(" | ")
        assert len(parts) == 3 and all(p.startswith(row["prediction"] + ": ") for p in parts)
        assert 0 < row["confidence"] <= 1


def test_the_checkpoint_carries_the_descriptions_it_was_trained_with(make_cfg, tmp_path):
    """Evaluation uses the descriptions stored in the checkpoint, even when their file is gone."""
    bank = yaml.safe_load((Path(__file__).parents[1] / "src/lmvision/text/banks/shapes_shape.yaml")
                          .read_text())
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({k: v[:2] for k, v in bank.items()}))
    trained = train(make_cfg("strategy=aux_text", "data.num_images=300", "logger=csv",
                             "debug=limit", "trainer.limit_test_batches=1.0",
                             f"descriptions.path={mine}", output_dir=tmp_path / "a"))
    best = read(tmp_path / "a" / "run.json")["checkpoints"]["best"]
    checkpoint = torch.load(best, weights_only=True, map_location="cpu")
    assert checkpoint["lmvision_descriptions"]["phrases"] == {k: v[:2] for k, v in bank.items()}
    mine.unlink()
    overrides = [f"ckpt_path={best}"]
    metrics = evaluate(make_cfg(*overrides, config_name="eval", output_dir=tmp_path / "e"))
    assert metrics["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert read(tmp_path / "e" / "run.json")["descriptions"]["path"] == str(mine)


def test_the_caption_contrastive_loss(make_cfg):
    metrics = train(make_cfg("strategy=aux_text", "data.num_images=300", "logger=csv",
                             "debug=limit", "strategy.contrastive_weight=0.5"))
    assert {"val/contrastive", "val/classification", "val/loss"} <= set(metrics)
    assert metrics["val/loss"] == pytest.approx(
        metrics["val/classification"] + 0.5 * metrics["val/contrastive"], rel=1e-4)


@pytest.mark.parametrize("freeze", ["all", "none"])
def test_the_contrastive_term_is_clip_infonce_on_the_captions(make_cfg, freeze):
    """The term matches CLIP's symmetric InfoNCE between the batch's images and captions, read
    from the cache (frozen encoder) or encoded from the batch's captions, tokenised by the
    strategy with the run's tokenizer (tuned encoder)."""
    from lmvision.run.parts import build_parts

    cfg = make_cfg("strategy=aux_text", "data.num_images=120", "strategy.contrastive_weight=1.0",
                   f"text_encoder.freeze={freeze}")
    datamodule, text, model = build_parts(cfg, {}, {})
    assert model.text is text and text.tokenizer is datamodule.tokenizer

    class Trainer:
        pass

    model.trainer = Trainer()
    model.trainer.datamodule = datamodule
    model.setup("fit")
    model.on_fit_start()  # a frozen encoder: the captions are encoded once, here
    assert (model._captions is not None) == (freeze == "all")
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    # the network tokenises what it reads itself: batches carry the strings, no tokens
    assert not {"caption_ids", "text_ids"} & set(batch) and len(batch["caption"]) == len(batch["image"])
    model.eval()  # no dropout: the two computations below see the same network
    with torch.no_grad():
        losses = model.step(batch, "val")
        images = model.net.image_features(batch["image"])
    strings = [datamodule.texts("caption")[i] for i in batch["index"].tolist()]
    encoded = text.tokenizer(strings, padding=True, truncation=True, max_length=text.max_length,
                             return_tensors="pt")
    with torch.no_grad():
        captions = F.normalize(model.net.text_encoder(encoded["input_ids"],
                                                      encoded["attention_mask"]), dim=-1)
        logits = model.net.scale * images @ captions.T
        target = torch.arange(len(logits))
        expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert losses["contrastive"] == pytest.approx(float(expected), rel=1e-4)
    assert losses["loss"] == pytest.approx(float(losses["classification"] + expected), rel=1e-4)


@pytest.mark.parametrize("overrides, match", [
    (["data.target=attributes"], "^data.task='multilabel': aux_text scores one class per image: "
                                   "it needs single-label data$"),
    (["descriptions.path=digits"], "classes and descriptions must match one to one by name"),
    (["descriptions=class_name", "descriptions.templates=[]"], "at least one template"),
])
def test_errors_before_training(make_cfg, overrides, match):
    with pytest.raises(UserError, match=match):
        train(make_cfg("strategy=aux_text", "data.num_images=300", "logger=csv", "debug=fdr",
                       *overrides))


def test_language_model_descriptions_through_the_config(make_cfg, tmp_path, tiny_causal_lm):
    """descriptions=language_model with a local model: the first run generates and caches, the
    second reads the cache; both record the provenance."""
    overrides = ["strategy=aux_text", "data.num_images=300", "logger=csv", "debug=fdr",
                 "descriptions=language_model", f"descriptions.name_or_path={tiny_causal_lm}",
                 "descriptions.num_per_class=2", "descriptions.max_new_tokens=8"]
    for run, hit in (("first", False), ("second", True)):
        train(make_cfg(*overrides, output_dir=tmp_path / run))
        provenance = read(tmp_path / run / "run.json")["descriptions"]
        assert provenance["source"] == "language_model" and provenance["cache_hit"] is hit
        assert provenance["model"]["name_or_path"] == str(tiny_causal_lm.resolve())
    stored = read(tmp_path / "first" / "descriptions.json")
    assert stored == read(tmp_path / "second" / "descriptions.json") | {
        "provenance": stored["provenance"]}
    assert all(len(v) == 2 for v in stored["phrases"].values())


def test_eval_keeps_the_trained_holdout_and_can_ask_for_other_descriptions(make_cfg, tmp_path):
    train(make_cfg("experiment=aux_text_shapes", "data.num_images=600", "logger=csv",
                   "debug=limit", "trainer.limit_test_batches=1.0", "seed=1",
                   output_dir=tmp_path / "a"))
    best = read(tmp_path / "a" / "run.json")["checkpoints"]["best"]
    # another seed draws other held-out classes: its "unseen" metrics would be meaningless
    overrides = [f"ckpt_path={best}", "seed=2"]
    with pytest.raises(UserError, match="trained with held-out classes"):
        evaluate(make_cfg(*overrides, config_name="eval", output_dir=tmp_path / "e1"))
    assert read(tmp_path / "e1" / "run.json")["status"] == "failed"
    # the same checkpoint scored with the class-name control instead of its descriptions
    overrides = [f"ckpt_path={best}", "descriptions=class_name"]
    metrics = evaluate(make_cfg(*overrides, config_name="eval", output_dir=tmp_path / "e2"))
    assert read(tmp_path / "e2" / "run.json")["descriptions"]["source"] == "class_name"
    assert ZERO_SHOT <= set(metrics)


def test_mean_score_trains_after_a_sanity_validation(make_cfg):
    """The frozen description vectors first computed under validation's inference mode are
    still usable by training steps."""
    metrics = train(make_cfg("strategy=aux_text", "data.num_images=300", "logger=csv",
                             "debug=limit", "strategy.net.scoring=mean_score",
                             "trainer.num_sanity_val_steps=1"))
    assert "test/acc" in metrics


def test_a_data_config_without_a_description_bank(make_cfg, tmp_path):
    """Strategies that read no descriptions do not need one; aux_text says what to give."""
    from omegaconf import open_dict

    for strategy in ("image_classifier", "aux_text"):
        cfg = make_cfg(f"strategy={strategy}", "data.num_images=300", "logger=csv", "debug=fdr",
                       output_dir=tmp_path / strategy)
        with open_dict(cfg):
            del cfg.data["descriptions"]
        if strategy == "image_classifier":
            assert "test/acc" in train(cfg)
        else:
            with pytest.raises(UserError, match="descriptions.path is not set"):
                train(cfg)
