"""Tokenizer builders. A text encoder config names one; the entry point calls it with the
training split's text, so a tokenizer can be pretrained (and ignore the text) or trained on it.

Both return a Hugging Face ``PreTrainedTokenizerFast``: the datamodule's collate and the text
encoders use the same object.
"""

from __future__ import annotations

from pathlib import Path

from lmvision.text.hub import from_pretrained

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                  "sep_token": "[SEP]", "mask_token": "[MASK]"}


class PretrainedTokenizer:
    """Loads the tokenizer that belongs to a pretrained model.

    Args:
        name_or_path: Hub model id or local directory (the same as the text encoder's).
    """

    def __init__(self, name_or_path: str) -> None:
        self.name_or_path = str(name_or_path)

    def __call__(self, texts: list[str] | None = None):
        from transformers import AutoTokenizer

        return from_pretrained(AutoTokenizer, self.name_or_path, "text_encoder.name_or_path")


class WordPieceTokenizer:
    """Trains a WordPiece tokenizer (BERT-style) on the training split's text and saves it.

    Args:
        vocab_size: Largest vocabulary (smaller when the text has fewer distinct pieces).
        save_dir: Where the trained tokenizer is saved (``save_pretrained`` format); the run
            directory by default, so the tokenizer travels with the run.
        lowercase: Lower-case the text first.
        min_frequency: Pieces seen fewer times are not added.
    """

    def __init__(self, vocab_size: int = 2000, save_dir: str | None = None, lowercase: bool = True,
                 min_frequency: int = 1) -> None:
        self.vocab_size = int(vocab_size)
        self.save_dir = save_dir
        self.lowercase = lowercase
        self.min_frequency = int(min_frequency)

    def __call__(self, texts: list[str]):
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
        from tokenizers.trainers import WordPieceTrainer
        from transformers import PreTrainedTokenizerFast

        texts = [t for t in (texts or []) if t and t.strip()]
        if not texts:
            raise ValueError("text_encoder.tokenizer: no training text to learn a vocabulary from "
                             "(does the dataset have a `text` field?)")
        tok = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=self.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = WordPieceTrainer(vocab_size=self.vocab_size, min_frequency=self.min_frequency,
                                   special_tokens=list(SPECIAL_TOKENS.values()))
        tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
        if self.save_dir:
            tokenizer.save_pretrained(str(Path(self.save_dir)))
        return tokenizer


def tokenizer_state(tokenizer) -> dict:
    """A Hugging Face fast tokenizer as plain data (stored in checkpoints)."""
    return {"json": tokenizer.backend_tokenizer.to_str(),
            "special_tokens": dict(tokenizer.special_tokens_map)}


def tokenizer_from_state(state: dict):
    """The tokenizer saved by :func:`tokenizer_state`, encoding exactly as it did."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(state["json"]),
                                   **state["special_tokens"])
