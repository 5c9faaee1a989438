"""Tokenizer builders. A text encoder config names one; the entry point calls it with the
training split's text, so a tokenizer can be pretrained (and ignore the text) or trained on it.

Both return a Hugging Face ``PreTrainedTokenizerFast``: the datamodule's collate and the text
encoders use the same object.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lmvision.errors import UserError
from lmvision.text.hub import from_pretrained

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                  "sep_token": "[SEP]", "mask_token": "[MASK]"}


class PretrainedTokenizer:
    """Loads the tokenizer that belongs to a pretrained model.

    Args:
        name_or_path: Hub model id or local directory (the same as the text encoder's).
    """

    # what lmvision-prefetch fetches for a node of this class: (kind, option, revision option)
    downloads = (("model", "name_or_path", None),)

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
        from transformers import PreTrainedTokenizerFast

        texts = [t for t in (texts or []) if t and t.strip()]
        if not texts:
            raise UserError("text_encoder.tokenizer: no training text to learn a vocabulary from "
                            "(does the dataset have a `text` field?)")
        normalizer = normalizers.BertNormalizer(lowercase=self.lowercase)
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        words = Counter(word for text in texts
                        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
        vocab = learn_wordpiece_vocab(words, self.vocab_size, self.min_frequency,
                                      list(SPECIAL_TOKENS.values()))
        tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)},
                                         unk_token=SPECIAL_TOKENS["unk_token"]))
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre_tokenizer
        tok.decoder = decoders.WordPiece()
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
        if self.save_dir:
            tokenizer.save_pretrained(str(Path(self.save_dir)))
        return tokenizer


def learn_wordpiece_vocab(words: Counter, vocab_size: int, min_frequency: int,
                          specials: list[str]) -> list[str]:
    """A WordPiece vocabulary learned by frequency merges, deterministically.

    Words start as characters (``c``, ``##c`` inside a word); the most frequent adjacent pair
    is merged, ties going to the alphabetically first pair, until ``vocab_size`` pieces or no
    pair occurs ``min_frequency`` times. (The ``tokenizers`` library's trainer breaks ties by
    hash order, so two trainings on the same text give different tokenizers, and the same
    seed would not give the same run.)
    """
    vocab = list(specials)
    symbols = {w: [c if i == 0 else "##" + c for i, c in enumerate(w)] for w in sorted(words)}
    alphabet = sorted({s for pieces in symbols.values() for s in pieces})
    vocab += [s for s in alphabet if s not in vocab]
    known = set(vocab)
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[str]] = {}
    for word, pieces in symbols.items():
        for pair in zip(pieces, pieces[1:]):
            pairs[pair] += words[word]
            where.setdefault(pair, set()).add(word)
    while len(vocab) < vocab_size and pairs:
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < max(min_frequency, 1):
            break
        a, b = best
        merged = a + b[2:]  # b is always a continuation ("##...")
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        for word in sorted(where.pop(best, ())):
            pieces, count = symbols[word], words[word]
            for pair in zip(pieces, pieces[1:]):
                pairs[pair] -= count
                if pairs[pair] <= 0:
                    del pairs[pair]
            out, i = [], 0
            while i < len(pieces):
                if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(pieces[i])
                    i += 1
            symbols[word] = out
            for pair in zip(out, out[1:]):
                pairs[pair] += count
                where.setdefault(pair, set()).add(word)
    return vocab


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


class CaptionTokenizer:
    """A captioner's tokenizer: a pretrained one by name or path (the decoder's own, e.g.
    ``gpt2``), or WordPiece learned from the training captions and saved.

    Args:
        name_or_path: Hub id or local directory of a pretrained tokenizer; ``None`` learns one.
        vocab_size, save_dir: Of the learned WordPiece vocabulary (see
            :class:`WordPieceTokenizer`).
    """

    # what lmvision-prefetch fetches for a node of this class: (kind, option, revision option)
    downloads = (("model", "name_or_path", None),)

    def __init__(self, name_or_path: str | None = None, vocab_size: int = 400,
                 save_dir: str | None = None) -> None:
        self.name_or_path, self.vocab_size, self.save_dir = name_or_path, vocab_size, save_dir

    def __call__(self, texts: list[str]):
        if self.name_or_path:
            from transformers import AutoTokenizer

            return from_pretrained(AutoTokenizer, str(self.name_or_path),
                                   "inputs.text.tokenizer.name_or_path")
        return WordPieceTokenizer(self.vocab_size, self.save_dir)(texts)


class CausalFormat:
    """A tokenizer's output as a causal language model reads captions: ``[BOS] tokens [EOS]``,
    padded on the right, with the attention mask marking real tokens (so labels can be masked on
    padding).

    BOS and EOS are the tokenizer's own (GPT-2's ``<|endoftext|>`` serves as both; a tokenizer
    with only an EOS starts with it too), or ``[CLS]`` and ``[SEP]`` for a BERT-style vocabulary; a tokenizer without a pad token (GPT-2's) pads
    with EOS, which the mask hides. Called like a Hugging Face tokenizer, so the datamodule's
    collate can use it for the ``caption`` field.

    Args:
        tokenizer: A Hugging Face tokenizer.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.bos_id = _first_id(tokenizer, "bos_token_id", "cls_token_id", "eos_token_id")
        self.eos_id = _first_id(tokenizer, "eos_token_id", "sep_token_id")
        if self.bos_id is None or self.eos_id is None:
            raise UserError("the caption tokenizer has neither BOS/EOS nor [CLS]/[SEP] tokens; "
                            "a causal decoder needs a start and an end token")
        pad = tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad is None else pad

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, strings: list[str], max_length: int = 64, **_) -> dict:
        import torch

        pieces = self.tokenizer(list(strings), add_special_tokens=False)["input_ids"]
        rows = [[self.bos_id, *ids[:max(max_length - 2, 0)], self.eos_id] for ids in pieces]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids) -> str:
        """The caption of one row of generated ids: up to the first EOS, without specials."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        text = self.tokenizer.decode([i for i in ids if i != self.bos_id],
                                     skip_special_tokens=True)
        return tidy(text)


def tidy(text: str) -> str:
    """Decoded text with the spaces a word-piece decoder puts around punctuation removed
    (``"top - left ( small ) ."`` reads ``"top-left (small)."``)."""
    import re

    text = " ".join(text.split())
    text = re.sub(r"\s+([.,;:!?)])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    return re.sub(r"(\w)\s*-\s*(\w)", r"\1-\2", text)


def _first_id(tokenizer, *names: str) -> int | None:
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None
