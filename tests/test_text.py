"""Text encoders (packaged MiniLM, any Hugging Face encoder, BERT from scratch), tokenizers,
the offline error, and the cache of frozen text features."""

from __future__ import annotations

import pytest
import torch

from lmvision.nn.text_encoders import pretrained, scratch_bert
from lmvision.nn.feature_cache import TextFeatureCache
from lmvision.text.hub import minilm_path
from lmvision.text.tokenizers import PretrainedTokenizer, WordPieceTokenizer

SENTENCES = ["The object is red; it is either a circle or a square.",
             "Note: red, a circle or a square.",
             "Colour blue. Shape: triangle or cross, not sure which."]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return PretrainedTokenizer(minilm_path())()


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, minilm_tokenizer):
    """A tiny BERT saved locally, loaded back through the same from_pretrained path as hub names."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=len(minilm_tokenizer), hidden_size=32, num_hidden_layers=3,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    minilm_tokenizer.save_pretrained(path)
    return path


def encode(encoder, tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return encoder(enc["input_ids"], enc["attention_mask"]), encoder.tokens(enc["input_ids"], enc["attention_mask"])


def test_minilm_is_pretrained_and_offline(minilm_tokenizer):
    encoder = pretrained(minilm_tokenizer, minilm_path(), pooling="mean", freeze="all")
    assert encoder.frozen and encoder.out_dim == 384
    pooled, tokens = encode(encoder, minilm_tokenizer, SENTENCES)
    assert pooled.shape == (3, 384) and tokens.shape[:2] == (3, max(len(minilm_tokenizer(s)["input_ids"]) for s in SENTENCES))
    sim = torch.nn.functional.cosine_similarity
    # a real sentence encoder: the two "red circle or square" notes are closer than the blue one
    assert sim(pooled[0], pooled[1], dim=0) > sim(pooled[0], pooled[2], dim=0) + 0.05
    encoder.train()
    assert not encoder.training  # a frozen encoder stays in eval mode (cacheable features)


@pytest.mark.parametrize("freeze,trainable_layers", [("none", 3), ("all_but_last_n", 1), ("all", 0)])
def test_hf_encoder_from_a_local_directory(tiny_bert_dir, freeze, trainable_layers):
    tokenizer = PretrainedTokenizer(str(tiny_bert_dir))()
    encoder = pretrained(tokenizer, str(tiny_bert_dir), pooling="cls", freeze=freeze, last_n=1)
    layers = encoder.model.encoder.layer
    assert sum(any(p.requires_grad for p in layer.parameters()) for layer in layers) == trainable_layers
    assert encoder.training == (freeze != "all")  # dropout on where something is trained
    pooled, tokens = encode(encoder.eval(), tokenizer, SENTENCES)
    assert pooled.shape == (3, 32) and torch.equal(pooled, tokens[:, 0])


def test_unknown_model_is_one_clear_error(minilm_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"text_encoder.name_or_path='no-such-org/no-such-model': "
                                         r"could not load AutoModel; tried a local directory .* "
                                         r"the hub \(not tried: HF_HUB_OFFLINE is set\)"):
        pretrained(minilm_tokenizer, "no-such-org/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"exists but holds no loadable model"):
        PretrainedTokenizer(str(tmp_path / "empty"))()


def test_vocabulary_mismatch_is_refused(minilm_tokenizer, tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"the tokenizer has \d+ tokens but the model embeds only 100"):
        pretrained(minilm_tokenizer, str(tmp_path))


def test_scratch_bert_with_a_wordpiece_tokenizer_trained_on_text(tmp_path):
    from transformers import AutoTokenizer

    texts = SENTENCES * 20
    tokenizer = WordPieceTokenizer(vocab_size=300, save_dir=str(tmp_path / "tok"))(texts)
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert reloaded(SENTENCES[0])["input_ids"] == tokenizer(SENTENCES[0])["input_ids"]
    ids = tokenizer(SENTENCES[0])["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "[CLS]" and tokenizer.unk_token_id not in ids
    encoder = scratch_bert(tokenizer, dim=32, depth=1, heads=2, intermediate_size=64)
    assert not encoder.frozen and encoder.out_dim == 32
    pooled, _ = encode(encoder, tokenizer, SENTENCES)
    pooled.sum().backward()
    assert encoder.model.embeddings.word_embeddings.weight.grad is not None
    with pytest.raises(ValueError, match="no training text"):
        WordPieceTokenizer()([])


def test_frozen_features_are_cached_per_distinct_text(minilm_tokenizer):
    encoder = pretrained(minilm_tokenizer, minilm_path(), freeze="all")
    texts = [SENTENCES[i % 3] for i in range(10)]
    cache = TextFeatureCache(encoder, minilm_tokenizer, texts, with_tokens=True, max_length=32)
    assert cache.num_unique == 3
    got = cache.lookup(torch.tensor([4, 2]))  # texts[4] = SENTENCES[1], texts[2] = SENTENCES[2]
    direct, tokens = encode(encoder, minilm_tokenizer, [SENTENCES[1], SENTENCES[2]])
    assert torch.allclose(got["text"], direct, atol=1e-5)
    n = int(got["text_mask"][0].sum())
    assert torch.allclose(got["text_tokens"][0, :n], tokens[0, :n], atol=1e-5)
