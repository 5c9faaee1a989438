"""The text side of a run: what a strategy that reads text is built with.

``inputs.text`` (config group ``inputs=``, chosen with the strategy) is a :class:`TextRecipe`:
which string field of the items the run reads, how its tokenizer is made, whether a causal
language model reads that field, the text encoder (a factory called with the tokenizer) and the
class descriptions. The run session builds the text side before anything that uses it:

1. the datamodule receives the recipe's :class:`TextField` and makes the tokenizer from its own
   training split (a pretrained tokenizer is loaded; a WordPiece one learns from the training
   strings), then tokenises that field in every batch;
2. the session makes a :class:`TextSide` from that tokenizer, the encoder factory and the
   descriptions of the data's classes (or the tokenizer and descriptions a checkpoint carries);
3. every network and strategy whose constructor takes ``text`` receives that one object.

Nothing is filled in after construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

FIELDS = ("text", "caption")


class TextField:
    """How the datamodule serves one string field: tokenised with a tokenizer it makes from the
    training split (``make(strings)``), as a causal LM reads it (``causal``) or as an encoder
    does, in every batch (``in_batches``) or not at all (the network tokenises what it needs).

    (Plain classes, not dataclasses, here: Hydra would turn a dataclass given to
    ``instantiate`` into a config node.)
    """

    def __init__(self, name: str, make: Callable[[list[str]], Any], causal: bool = False,
                 in_batches: bool = True) -> None:
        self.name, self.make, self.causal, self.in_batches = name, make, causal, in_batches


class TextRecipe:
    """What ``inputs.text`` names (instantiated from the config; nothing is built yet).

    Args:
        field: The items' string field the run reads: ``text`` (side text given with each
            image) or ``caption``; its training strings are what a tokenizer learns from.
        tokenizer: Makes the tokenizer from the training strings (``text_encoder.tokenizer``,
            or a captioner's ``CaptionTokenizer``).
        causal: A causal language model reads the field (``[BOS] tokens [EOS]``).
        in_batches: The datamodule tokenises the field in every batch (``text_ids`` /
            ``text_mask`` or ``caption_ids`` / ``caption_mask``); false when the network
            tokenises what it reads itself (class descriptions).
        encoder: Makes the text encoder, called with ``tokenizer=`` (``text_encoder.encoder``);
            ``None`` when no text encoder is part of the network.
        descriptions: Makes the class descriptions from the class names (``descriptions=``);
            ``None`` when the strategy reads none.
    """

    def __init__(self, field: str, tokenizer: Callable[[list[str]], Any], causal: bool = False,
                 in_batches: bool = True, encoder: Callable[..., Any] | None = None,
                 descriptions: Callable[[Sequence[str]], Any] | None = None) -> None:
        if field not in FIELDS:
            raise ValueError(f"field={field!r}: choose one of {', '.join(FIELDS)}")
        self.field, self.tokenizer, self.causal = field, tokenizer, bool(causal)
        self.in_batches, self.encoder, self.descriptions = bool(in_batches), encoder, descriptions

    def data_field(self, tokenizer: Any | None = None) -> TextField:
        """What the datamodule needs: ``tokenizer`` (a checkpoint's) instead of making one."""
        make = self.tokenizer if tokenizer is None else (lambda strings: tokenizer)
        return TextField(self.field, make, self.causal, self.in_batches)

    def side(self, datamodule: Any, descriptions: Any | None = None) -> "TextSide":
        """The text side, once the datamodule has made its tokenizer; ``descriptions`` (a
        checkpoint's) instead of making them."""
        classes = tuple(datamodule.classes)
        if descriptions is None and self.descriptions is not None:
            descriptions = self.descriptions(list(classes))
        return TextSide(field=self.field, tokenizer=datamodule.tokenizer, causal=self.causal,
                        make_encoder=self.encoder, descriptions=descriptions, classes=classes,
                        max_length=datamodule.max_text_length,
                        read_strings=lambda: datamodule.texts(self.field))


class TextSide:
    """The built text side, handed to the constructors of networks and strategies.

    Args:
        field: The items' string field the run reads (``text`` or ``caption``).
        tokenizer: The tokenizer (a Hugging Face fast tokenizer): the same object the
            datamodule's collate uses.
        causal: A causal language model reads the field.
        make_encoder: The text encoder factory (``make_encoder(tokenizer=...)``), or ``None``.
        descriptions: The class descriptions (:class:`~lmvision.text.descriptions.Descriptions`)
            or ``None``.
        classes: The data's class names, in label order.
        max_length: Longest token sequence of a text (the data's ``max_text_length``).
        read_strings: Reads the field's string of every item, in dataset order (see
            :meth:`strings`).
    """

    def __init__(self, field: str, tokenizer: Any, causal: bool = False,
                 make_encoder: Callable[..., Any] | None = None, descriptions: Any | None = None,
                 classes: Sequence[str] = (), max_length: int = 64,
                 read_strings: Callable[[], Sequence[str]] = tuple) -> None:
        self.field, self.tokenizer, self.causal = field, tokenizer, causal
        self.make_encoder, self.descriptions = make_encoder, descriptions
        self.classes, self.max_length = tuple(classes), int(max_length)
        self.read_strings = read_strings

    def strings(self) -> list[str]:
        """The field's string of every item, in dataset order: what a cache of a frozen
        encoder's features holds, looked up by item index (read when first asked for: data in
        shards has to be read to know them)."""
        return list(self.read_strings())

    def encoder(self):
        """A new text encoder for this tokenizer (``ValueError`` when the side has none)."""
        if self.make_encoder is None:
            raise ValueError("text: this text side has no text encoder (inputs.text.encoder)")
        return self.make_encoder(tokenizer=self.tokenizer)
