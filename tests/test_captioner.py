"""Strategy `captioner`: caption tokenizers, decoding, caption metrics, faithfulness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lmvision.checks import ArgumentError
from lmvision.data.collate import BatchCollator
from lmvision.data.shapes import ShapesDataset
from lmvision.errors import UserError
from lmvision.evaluation.caption_metrics import caption_scores, mentions
from lmvision.evaluation.faithfulness import (
    SALIENCY_METHODS,
    Faithfulness,
    mask_out,
    pointing_hits,
    saliency,
)
from lmvision.nn.captioner import Captioner
from lmvision.nn.image_encoders import SmallCNN
from lmvision.text.side import TextSide
from lmvision.text.tokenizers import (
    CausalFormat,
    WordPieceTokenizer,
    tokenizer_from_state,
    tokenizer_state,
)
from lmvision.train import train

CAPTIONS = ["a red circle in the top left", "a big blue square", "one green cross (small)"]


def wordpiece(tmp_path: Path | None = None):
    return WordPieceTokenizer(vocab_size=80, save_dir=tmp_path)(CAPTIONS * 3)


def gpt2_style_tokenizer():
    """A byte-level BPE with GPT-2's single special token and no pad token, built here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CAPTIONS * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")


# -- tokenizers --------------------------------------------------------------------------------
def test_causal_format_with_a_trained_wordpiece_tokenizer(tmp_path):
    tokenizer = wordpiece(tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()  # saved with the run
    fmt = CausalFormat(tokenizer)
    assert (fmt.bos_id, fmt.eos_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    enc = fmt(CAPTIONS[:2])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids[0, 0] == fmt.bos_id and ids[1, 0] == fmt.bos_id
    ends = mask.sum(1) - 1
    assert ids[0, ends[0]] == fmt.eos_id and ids[1, ends[1]] == fmt.eos_id
    assert (ids[mask == 0] == tokenizer.pad_token_id).all() and (mask[1, ends[1] + 1:] == 0).all()
    assert fmt.decode(ids[0, 1:]) == CAPTIONS[0]
    # the same tokenizer after a trip through a checkpoint encodes identically
    again = CausalFormat(tokenizer_from_state(tokenizer_state(tokenizer)))
    assert torch.equal(again(CAPTIONS)["input_ids"], fmt(CAPTIONS)["input_ids"])


def test_causal_format_pads_with_eos_when_there_is_no_pad_token():
    tokenizer = gpt2_style_tokenizer()
    assert tokenizer.pad_token_id is None
    fmt = CausalFormat(tokenizer)
    eos = tokenizer.eos_token_id
    assert fmt.bos_id == fmt.eos_id == fmt.pad_id == eos
    enc = fmt(["a big blue square", "a red circle in the top left"])
    short = enc["attention_mask"][0]
    assert short.sum() < len(short)  # padded, and the mask hides the padding
    assert fmt.decode(enc["input_ids"][1, 1:]) == "a red circle in the top left"


def test_the_collate_tokenises_the_field_the_run_reads_as_its_reader_reads_it():
    items = [{"image": torch.zeros(3, 4, 4), "label": 0, "text": "some side text",
              "caption": c, "references": [c, c.upper()], "mask": torch.ones(4, 4, dtype=torch.bool)}
             for c in CAPTIONS]
    text_tok, caption_tok = wordpiece(), gpt2_style_tokenizer()
    caption_fmt = CausalFormat(caption_tok)
    # a captioner's run: the captions, as a causal decoder reads them; the side text stays text
    batch = BatchCollator(caption_tok, 32, tokenize=("caption",), causal=True)(items)
    assert batch["caption_ids"][0, 0] == caption_fmt.bos_id != text_tok.cls_token_id
    assert torch.equal(batch["caption_ids"], caption_fmt(CAPTIONS)["input_ids"])
    assert "text_ids" not in batch and batch["text"] == ["some side text"] * 3
    assert batch["references"][2] == [CAPTIONS[2], CAPTIONS[2].upper()]
    assert batch["mask"].shape == (3, 4, 4)
    # a fusion run: the side text, as an encoder reads it
    batch = BatchCollator(text_tok, 32, tokenize=("text",))(items)
    assert batch["text_ids"][0, 0] == text_tok.cls_token_id and "caption_ids" not in batch
    assert batch["caption"] == CAPTIONS


# -- shapes references and masks ---------------------------------------------------------------
def test_shapes_have_distinct_reference_captions_and_object_masks(make_cfg):
    data = ShapesDataset(40, 16, seed=0, colors="distinct", noise=0, num_captions=5)
    plain = ShapesDataset(40, 16, seed=0, colors="distinct", noise=0, num_captions=1)
    assert torch.equal(data.images, plain.images) and data.captions == plain.captions
    for i in range(40):
        refs = data[i]["references"]
        assert len(refs) == 5 and len(set(refs)) == 5 and refs[0] == data[i]["caption"]
        assert all(mentions(r, data.classes[int(data.labels[i])]) for r in refs)
        image, mask = data[i]["image"], data[i]["mask"]
        inside = image[:, mask].T.unique(dim=0)
        assert len(inside) == 1 and not (image[:, ~mask] == inside.T).all(0).any()
    with pytest.raises(ArgumentError, match="^num_captions=9: expected a whole number, at most 8$"):
        ShapesDataset(10, 16, num_captions=9)
    with pytest.raises(UserError, match="^data.num_captions=9: expected a whole number, at most 8$"):
        train(make_cfg("data.num_captions=9", "logger=csv", "debug=fdr"))


# -- metrics -----------------------------------------------------------------------------------
def test_caption_metrics_on_a_hand_checked_example():
    refs = [["A red circle in the top left."]]
    scores = caption_scores(["a red circle"], refs)
    # BLEU-1: every word matches (precision 1), brevity penalty exp(1 - 7/3)
    assert scores["bleu1"] == pytest.approx(0.2636, abs=1e-3)
    # ROUGE-L: LCS 3, precision 3/3, recall 3/7, beta 1.2
    p, r, b2 = 1.0, 3 / 7, 1.2 ** 2
    assert scores["rougeL"] == pytest.approx((1 + b2) * p * r / (r + b2 * p), abs=1e-4)
    perfect = caption_scores(["a red circle in the top left", "a blue square"],
                             [["a red circle in the top left"], ["a blue square", "blue square"]])
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["rougeL"] == 1.0
    wrong = caption_scores(["the cat sat", "on a mat"],
                           [["a red circle in the top left"], ["a blue square", "blue square"]])
    assert wrong["cider"] < perfect["cider"] and wrong["bleu4"] < 1e-6
    assert caption_scores([""], refs)["bleu1"] < 1e-9  # an empty caption scores nothing


@pytest.mark.slow
def test_meteor_where_java_is_installed():
    import shutil

    if shutil.which("java") is None:
        pytest.skip("no Java here: METEOR is not available (the other scores are)")
    scores = caption_scores(["a red circle at the top left", "a big blue square"],
                            [["a red circle in the top left"], ["a blue square"]], meteor=True)
    assert 0.2 < scores["meteor"] < 0.9
    perfect = caption_scores(["a blue square"], [["a blue square"]], meteor=True)
    assert perfect["meteor"] > scores["meteor"]


def test_faithfulness_parts():
    assert mentions("There is a large Red circle.", "circle")
    assert not mentions("a circular thing", "circle")
    images = torch.zeros(2, 3, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    images[:, 0][masks] = 1.0
    images[:, 1] = 0.2
    cleared = mask_out(images, masks)
    assert torch.allclose(cleared[:, 0], torch.zeros(2, 4, 4))  # object gone, background stays
    assert torch.allclose(cleared[:, 1], torch.full((2, 4, 4), 0.2))
    maps = torch.zeros(2, 4, 4)
    maps[0, 2, 2] = 1.0  # on the object
    maps[1, 0, 3] = 1.0  # off it
    assert pointing_hits(maps, masks).tolist() == [True, False]
    flat = torch.zeros(2, 4, 4)
    flat[0, 0:2, 0:2] = 1.0  # a 2x2 cell with one of its four pixels on the object
    flat[1, 2:4, 2:4] = 1.0  # its first pixel on the object, the other three off it
    assert pointing_hits(flat, masks).tolist() == [0.25, 0.25]
    assert pointing_hits(torch.zeros(1, 4, 4), masks[:1]).tolist() == [4 / 16]  # no peak: chance
    f = Faithfulness(["circle", "square"], None)
    f.update(["a circle", "a circle"], torch.tensor([0, 1]), torch.tensor([0, 0]))
    f.update_pointing("gradcam", maps, masks)
    values = Faithfulness.metrics(*f.totals())
    assert values["explain/mention_rate"] == 0.5 and values["explain/pointing"] == 0.5
    assert values["explain/pointing_random"] == pytest.approx(4 / 16)


class RedInRegion(nn.Module):
    """Class 0 scores the red left in a fixed region (through one 3x3 convolution, for
    Grad-CAM); class 1 the opposite."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        self.conv.weight.data.zero_()
        self.conv.weight.data[0, 0, 1, 1] = 1.0  # passes the red channel through
        self.region = region.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (self.conv(x)[:, 0] * self.region).sum((1, 2))
        return torch.stack([score, -score], 1)


@pytest.mark.parametrize("method", SALIENCY_METHODS)
def test_each_saliency_method_peaks_where_the_classifier_looks(method):
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[:, 8:14, 5:11] = True  # off the corner: an all-zero map scores the object's share
    images = torch.full((3, 3, 16, 16), 0.2)
    images[:, 0][masks] = 1.0
    images[1, 1] = 0.6  # another background colour
    model = RedInRegion(masks[0])
    maps = saliency(method, model, model, images, torch.zeros(3, dtype=torch.long),
                    baseline=torch.zeros(3))
    assert maps.shape == (3, 16, 16) and (maps >= 0).all()
    assert (pointing_hits(maps, masks) == 1).all()
    if method == "lime":  # seeded per image: the same map twice, and alone as in a batch
        again = saliency(method, model, model, images, torch.zeros(3, dtype=torch.long),
                         baseline=torch.zeros(3))
        assert torch.equal(maps, again)
        alone = saliency(method, model, model, images[2:], torch.zeros(1, dtype=torch.long),
                         baseline=torch.zeros(3))
        assert torch.equal(alone[0], maps[2])


# -- the model and its decoding ----------------------------------------------------------------
def tiny_captioner(tokenizer, **kwargs) -> Captioner:
    torch.manual_seed(0)
    text = TextSide("caption", tokenizer, causal=True)
    return Captioner(SmallCNN(3, (8, 16), 16), 16, 3, text, num_classes=4, dim=32, depth=2,
                     heads=2, max_length=12, mapping_hidden=32, **kwargs).eval()


@pytest.mark.parametrize("decoding", ["greedy", "beam", "nucleus"])
def test_each_decoding_mode_runs_batched(decoding):
    model = tiny_captioner(wordpiece())
    images = torch.rand(3, 3, 16, 16)
    torch.manual_seed(1)
    ids = model.generate(images, decoding=decoding, num_beams=3)
    assert ids.shape[0] == 3 and ids.shape[1] <= 11
    if decoding == "nucleus":  # seeded sampling repeats itself
        torch.manual_seed(1)
        assert torch.equal(model.generate(images, decoding=decoding), ids)
    with pytest.raises(ArgumentError, match="^decoding='sample': choose one of greedy, beam, "
                                            "nucleus$"):
        model.generate(images, decoding="sample")


def test_generate_reads_the_prefix_once_then_one_new_token_per_step():
    """Captions decode with the KV cache: the decoder reads the prefix and BOS once, then only
    each new token (the same captions as without the cache: tests/test_decoding.py)."""
    model = tiny_captioner(wordpiece())
    images = torch.rand(4, 3, 16, 16)
    reads: list[int] = []

    def record(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        reads.append((embeds if embeds is not None else kwargs["input_ids"]).shape[1])

    model.decoder.register_forward_pre_hook(record, with_kwargs=True)
    ids = model.generate(images, min_length=4)
    first = model.num_prefix + 1  # the prefix and BOS
    assert reads == [first] + [1] * (len(reads) - 1)  # one new token per step
    assert len(reads) >= 4 and ids.shape[1] == len(reads)  # a token per read, at least 4


def test_a_pretrained_decoder_loads_from_a_local_directory(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = gpt2_style_tokenizer()
    path = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2,
                               n_positions=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    model = tiny_captioner(tokenizer, decoder_name=str(path), freeze_decoder=True)
    assert model.decoder.config.n_embd == 32
    assert not any(p.requires_grad for p in model.decoder.parameters())
    assert model.generate(torch.rand(2, 3, 16, 16)).shape[0] == 2
    with pytest.raises(UserError, match="strategy.net.decoder_name"):
        tiny_captioner(tokenizer, decoder_name=str(tmp_path / "missing"))


# -- the strategy ------------------------------------------------------------------------------
def test_the_multitask_captioner_trains_and_reports_caption_and_explain_metrics(make_cfg, tmp_path):
    run = tmp_path / "run"
    train(make_cfg("experiment=captioner_shapes", "data.num_images=200", "data.image_size=16",
                   "trainer.max_epochs=1", "logger=csv", output_dir=run))
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test/bleu4", "test/rougeL", "test/cider", "test/acc", "explain/mention_rate",
                "explain/consistency", "explain/counterfactual", "explain/pointing_gradcam",
                "explain/pointing_integrated_gradients", "explain/pointing_random",
                "val/cider_best"):
        assert key in metrics, key
    assert (run / "caption_tokenizer" / "tokenizer.json").is_file()
    ckpt = torch.load(next((run / "checkpoints").glob("last.ckpt")), weights_only=False)
    assert "lmvision_tokenizer" in ckpt  # the caption tokenizer travels with the weights


def test_a_pretrained_decoder_and_its_tokenizer_by_path_from_the_config(make_cfg, tiny_causal_lm):
    """The route a user with network takes with `gpt2`, through a local directory here."""
    metrics = train(make_cfg("experiment=captioner_shapes", "data.num_images=200", "logger=csv",
                             "debug=fdr", f"strategy.net.decoder_name='{tiny_causal_lm}'",
                             f"inputs.text.tokenizer.name_or_path='{tiny_causal_lm}'"))
    assert "test/bleu4" in metrics


@pytest.mark.parametrize("overrides, match", [
    (["strategy.decoding=sample"],
     "^strategy.decoding='sample': choose one of greedy, beam, nucleus$"),
    (["strategy.net.num_classes=0"],
     (r"^strategy.classifier_weight=1.0: a classification head \(net.num_classes > 0\) goes "
      "with classifier_weight > 0")),
    (["explain.saliency=[lime_v2]"], "^explain.saliency: 'lime_v2' is not one of"),
])
def test_captioner_errors_before_training(make_cfg, overrides, match):
    with pytest.raises(UserError, match=match):
        train(make_cfg("experiment=captioner_shapes", "data.num_images=200", "logger=csv",
                       "debug=fdr", *overrides))


# -- lmvision-explain --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """A multi-task captioner and a separate image classifier, trained one epoch each on the
    same small shapes data."""
    from conftest import compose

    base = tmp_path_factory.mktemp("pair")
    data = ["data.num_images=200", "data.image_size=16", "data.colors=distinct", "data.noise=0",
            "trainer.max_epochs=1", "logger=csv"]
    runs = {}
    for name, extra in (("captioner", ["experiment=captioner_shapes"]),
                        ("classifier", ["strategy=image_classifier"]),
                        ("fusion", ["strategy=fusion", "text_encoder=scratch"]),
                        ("aux_text", ["strategy=aux_text"])):
        runs[name] = base / name
        train(compose([*extra, *data], runs[name], "train"))
    return {k: v / "checkpoints" / "last.ckpt" for k, v in runs.items()}


def test_explain_a_folder_of_png_files_with_a_separate_classifier(trained_pair, tmp_path):
    from conftest import compose
    from PIL import Image

    from lmvision.explain import explain

    folder = tmp_path / "photos"
    folder.mkdir()
    data = ShapesDataset(3, 24, seed=5, colors="distinct", noise=0)  # another size: resized
    for i in range(3):
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(folder / f"shape{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "explained"
    cfg = compose([f"ckpt_path={trained_pair['captioner']}", f"classifier_path={trained_pair['classifier']}",
                   f"images={folder}", "explain.saliency=[gradcam,lime]", "logger=wandb"], out,
                  "explain")
    assert explain(cfg) == {}  # no labels or masks: no faithfulness metrics
    rows = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["shape0.png", "shape1.png", "shape2.png"]
    for row in rows:
        assert row["predicted"] in data.classes and 0.0 <= row["confidence"] <= 1.0
        assert isinstance(row["caption"], str)
        assert {"peak_gradcam", "peak_lime"} <= set(row)
    assert (out / "explanations.png").stat().st_size > 1000
    # the W&B table (an offline run here): one row per image, with its caption
    tables = list(out.glob("wandb/offline-run-*/files/media/table/explanations_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert len(table["data"]) == 3 and "caption" in table["columns"]
    assert [r[table["columns"].index("caption")] for r in table["data"]] == \
        [r["caption"] for r in rows]
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


def test_explain_the_test_split_measures_faithfulness(trained_pair, tmp_path):
    from conftest import compose

    from lmvision.explain import explain

    out = tmp_path / "explained"
    metrics = explain(compose([f"ckpt_path={trained_pair['captioner']}", "explain.limit=20",
                               "explain.saliency=[gradcam,occlusion]"], out, "explain"))
    for key in ("explain/mention_rate", "explain/consistency", "explain/counterfactual",
                "explain/pointing_gradcam", "explain/pointing_occlusion", "explain/pointing",
                "explain/pointing_random"):
        assert 0.0 <= metrics[key] <= 2.0, key
    rows = (out / "explanations.jsonl").read_text().splitlines()
    assert len(rows) == 20 and "on_object_gradcam" in json.loads(rows[0])
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    # a fusion classifier reads its side text: batches come from its own data
    fused = explain(compose([f"ckpt_path={trained_pair['captioner']}", "explain.limit=8",
                             "explain.saliency=[gradcam]",
                             f"classifier_path={trained_pair['fusion']}"], tmp_path / "fused", "explain"))
    assert 0.0 <= fused["explain/pointing_gradcam"] <= 1.0
    # an aux_text classifier (class descriptions through the packaged text encoder)
    described = explain(compose([f"ckpt_path={trained_pair['captioner']}", "explain.limit=8",
                                 "explain.saliency=[gradcam]",
                                 f"classifier_path={trained_pair['aux_text']}"],
                                tmp_path / "described", "explain"))
    assert 0.0 <= described["explain/pointing_gradcam"] <= 1.0
    assert 0.0 <= described["explain/mention_rate"] <= 1.0
    with pytest.raises(UserError, match="side text"):
        explain(compose([f"ckpt_path={trained_pair['captioner']}", f"images={tmp_path}",
                         f"classifier_path={trained_pair['fusion']}"], tmp_path / "bad3", "explain"))
    with pytest.raises(UserError, match="expected a captioner checkpoint"):
        explain(compose([f"ckpt_path={trained_pair['classifier']}"], tmp_path / "bad", "explain"))
    with pytest.raises(UserError, match="images=.*no such file or folder"):
        explain(compose([f"ckpt_path={trained_pair['captioner']}", f"images={tmp_path / 'nope'}"],
                        tmp_path / "bad2", "explain"))


@pytest.mark.slow
def test_the_study_measures_decoding_speed_of_a_checkpoint(trained_pair, tmp_path):
    """`experiments/captioner/run.py --speed-only CKPT` (its figures are in its README)."""
    from conftest import ROOT, run_cli

    result = run_cli([str(ROOT / "experiments" / "captioner" / "run.py"), "--quick",
                      "--speed-only", str(trained_pair["captioner"])], cwd=tmp_path, timeout=600)
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-2000:]
    assert "| trained, beam | 64 |" in result.stdout
    assert "PASS: greedy captions identical with and without the KV cache" in result.stdout
