"""Class descriptions: text about each class, from a file, a language model, or a control.

Every source is called with the dataset's class names and returns :class:`Descriptions`: the
texts of each class (``by_class``, in class order) and where they came from (``provenance``,
written into the run record). Classes and descriptions are matched **by name**, never by
position: a missing, extra or misspelled class is one error that lists them.

Sources (config group ``descriptions=``):

* :class:`FileDescriptions` (``file``): a YAML or JSON mapping ``class name -> [phrases]``,
  shipped with lmvision (``shapes_color_shape``, ``digits``, ``cifar10``, ``cifar100``...) or
  given by path;
* :class:`~lmvision.text.language_model.LanguageModelDescriptions` (``language_model``): any Hugging Face causal LM writes
  them from a prompt; the result is cached on disk under a hash of everything that shaped it,
  with that provenance beside it, and a cache hit never loads the model;
* controls: :class:`ClassNameDescriptions` (``class_name``: prompt templates only) and
  :class:`RandomWordsDescriptions` (``random_words``: the class name followed by seeded random
  words, as many and as long as the real descriptions).

Each text is ``template.format(class_name=..., description=...)``; the default template puts
the class name first ("red circle: a round disc with no corners"), as the random-words control
does, so the two differ only in the words after the name.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmvision.errors import UserError

BANKS = Path(__file__).resolve().parent / "banks"  # description files shipped with lmvision
TEMPLATE = "{class_name}: {description}"
CLASS_NAME_TEMPLATES = (
    "a photo of a {class_name}.",
    "a picture of a {class_name}.",
    "an image showing a {class_name}.",
    "a close-up photo of the {class_name}.",
    "a low resolution photo of a {class_name}.",
)
DEFAULT_PROMPT = (
    "Q: What are useful visual features for distinguishing a {class_name} in a photo?\n"
    "A: There are several useful visual features to tell there is a {class_name} in a photo:\n-"
)


class Descriptions:
    """The descriptions of every class, in class order. (A plain class, not a dataclass: Hydra
    would turn a dataclass argument into a config node.)

    Args:
        by_class: ``{class name: [text, ...]}`` (what the text encoder reads).
        phrases: ``{class name: [phrase, ...]}`` before the template (what was written).
        provenance: Where they came from (source, file or model, prompt, settings...).
        config: The resolved ``descriptions`` config that built them (set by the entry point),
            so that a resumed or evaluated run knows whether it asks for the same ones.
    """

    def __init__(self, by_class: dict[str, list[str]], phrases: dict[str, list[str]] | None = None,
                 provenance: dict[str, Any] | None = None, config: dict | None = None) -> None:
        self.by_class = by_class
        self.phrases = phrases or {}
        self.provenance = provenance or {}
        self.config = config

    def flat(self) -> tuple[list[str], list[int]]:
        """Every text, and the index of its class (in ``by_class`` order)."""
        texts, owners = [], []
        for index, values in enumerate(self.by_class.values()):
            texts += values
            owners += [index] * len(values)
        return texts, owners

    def state(self) -> dict[str, Any]:
        """Plain containers, as stored in checkpoints."""
        return {"by_class": self.by_class, "phrases": self.phrases, "provenance": self.provenance,
                "config": self.config}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Descriptions":
        return cls(dict(state["by_class"]), dict(state.get("phrases") or {}),
                   dict(state.get("provenance") or {}), state.get("config"))


def display_name(class_name: str) -> str:
    """A class name as text reads it (``aquarium_fish`` -> ``aquarium fish``)."""
    return class_name.replace("_", " ")


def match_classes(bank: Any, classes: Sequence[str], origin: str) -> dict[str, list[str]]:
    """The phrases of ``bank`` for each of ``classes``, matched by name.

    Raises one UserError that lists the classes without descriptions, the descriptions of
    classes the data does not have, and likely misspellings; or that names the first class
    whose value is not a non-empty list of non-empty strings.
    """
    if not isinstance(bank, Mapping):
        raise UserError(f"{origin}: expected a mapping of class name to a list of descriptions, "
                        f"got {type(bank).__name__}")
    keys = [str(k) for k in bank]
    missing = [c for c in classes if c not in bank]
    extra = [k for k in keys if k not in classes]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no descriptions for {len(missing)} class(es): {_names(missing)}")
        if extra:
            parts.append(f"descriptions of {len(extra)} class(es) the data does not have: "
                         f"{_names(extra)}")
        likely = [f"{k!r} -> {close[0]!r}" for k in extra
                  if (close := difflib.get_close_matches(k, missing, n=1, cutoff=0.6))]
        if likely:
            parts.append(f"misspelled? {', '.join(likely)}")
        raise UserError(f"{origin}: classes and descriptions must match one to one by name; "
                        + "; ".join(parts))
    out = {}
    for c in classes:
        values = bank[c]
        if isinstance(values, str):
            values = [values]
        if (not isinstance(values, Sequence) or not values
                or not all(isinstance(v, str) and v.strip() for v in values)):
            raise UserError(f"{origin}: class {c!r} needs a non-empty list of non-empty strings, "
                            f"got {values!r}")
        out[c] = [v.strip() for v in values]
    return out


def _names(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def apply_template(phrases: dict[str, list[str]], template: str, option: str) -> dict[str, list[str]]:
    """``template`` filled with each class name and phrase."""
    try:
        return {c: [template.format(class_name=display_name(c), description=p) for p in ps]
                for c, ps in phrases.items()}
    except (KeyError, IndexError, ValueError) as err:
        raise UserError(f"{option}={template!r}: a template may use {{class_name}} and "
                        f"{{description}} only ({err})") from err


# -- file ------------------------------------------------------------------------------------
class FileDescriptions:
    """Descriptions from a YAML or JSON file: ``{class name: [phrase, ...]}``.

    Args:
        path: A shipped bank by name (``shapes_color_shape``, ``digits``, ``cifar10``...; see
            :func:`shipped_banks`) or the path of a ``.yaml``/``.yml``/``.json`` file.
        template: How a phrase becomes a text, with ``{class_name}`` and ``{description}``.
    """

    def __init__(self, path: str | None, template: str = TEMPLATE) -> None:
        self.path, self.template = path, template

    def resolve(self) -> Path:
        """The file ``path`` names."""
        if self.path is None:
            raise UserError("descriptions.path is not set and the data config names no shipped "
                            "bank (data.descriptions): give descriptions.path=<file.yaml|json> "
                            f"or one of {', '.join(shipped_banks())}, or write them with "
                            "descriptions=language_model (or use the class names: "
                            "descriptions=class_name)")
        self.path = str(self.path)
        shipped = BANKS / f"{self.path}.yaml"
        if "/" not in self.path and "." not in self.path and shipped.is_file():
            return shipped
        file = Path(self.path).expanduser()
        if not file.is_file():
            raise UserError(f"descriptions.path={self.path!r}: no such file, and not a shipped "
                            f"bank ({', '.join(shipped_banks())})")
        return file

    def __call__(self, classes: Sequence[str]) -> Descriptions:
        file = self.resolve()
        try:
            text = file.read_text(encoding="utf-8")
            if file.suffix == ".json":
                raw = json.loads(text)
            elif file.suffix in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(text)
            else:
                raise UserError(f"descriptions.path={file}: expected a .yaml, .yml or .json file")
        except UnicodeDecodeError as err:
            raise UserError(f"descriptions.path={file}: not UTF-8 text ({err.reason} at byte "
                            f"{err.start})") from err
        except json.JSONDecodeError as err:
            raise UserError(f"descriptions.path={file}: not valid JSON (line {err.lineno}: "
                            f"{err.msg})") from err
        except Exception as err:  # yaml.YAMLError, imported lazily
            if isinstance(err, UserError):
                raise
            raise UserError(f"descriptions.path={file}: not valid YAML "
                            f"({str(err).splitlines()[0]})") from err
        phrases = match_classes(raw, classes, f"descriptions.path={file}")
        provenance = {"source": "file", "path": str(file), "template": self.template,
                      "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}
        return Descriptions(apply_template(phrases, self.template, "descriptions.template"),
                            phrases, provenance)


def shipped_banks() -> list[str]:
    """Names of the description files shipped with lmvision."""
    return sorted(p.stem for p in BANKS.glob("*.yaml"))


# -- controls --------------------------------------------------------------------------------
class ClassNameDescriptions:
    """Control: prompt templates with the class name and nothing else ("a photo of a {}").

    Args:
        templates: Templates with ``{class_name}``.
    """

    def __init__(self, templates: Sequence[str] = CLASS_NAME_TEMPLATES) -> None:
        if not templates:
            raise UserError("descriptions.templates: give at least one template")
        self.templates = [str(t) for t in templates]

    def __call__(self, classes: Sequence[str]) -> Descriptions:
        try:
            by_class = {c: [t.format(class_name=display_name(c)) for t in self.templates]
                        for c in classes}
        except (KeyError, IndexError, ValueError) as err:
            raise UserError(f"descriptions.templates={self.templates!r}: a template may use "
                            f"{{class_name}} only ({err})") from err
        phrases = {c: list(self.templates) for c in classes}
        return Descriptions(by_class, phrases, {"source": "class_name", "templates": self.templates})


class RandomWordsDescriptions:
    """Control (as WaffleCLIP): the class name followed by seeded random words, as many and as
    long as the words of the real descriptions of ``reference``.

    Args:
        reference: The real descriptions (another source), whose counts and lengths are copied.
        seed: Seed of the random letters.
        template: As in :class:`FileDescriptions` (the random words are the ``description``).
    """

    def __init__(self, reference: Any, seed: int = 0, template: str = TEMPLATE) -> None:
        self.reference, self.seed, self.template = reference, int(seed), template

    def __call__(self, classes: Sequence[str]) -> Descriptions:
        import random

        real = self.reference(classes)
        rng = random.Random(self.seed)
        phrases = {c: [" ".join("".join(rng.choice(string.ascii_lowercase) for _ in word)
                                for word in phrase.split())
                       for phrase in real.phrases[c]]
                   for c in classes}
        provenance = {"source": "random_words", "seed": self.seed, "template": self.template,
                      "reference": real.provenance}
        return Descriptions(apply_template(phrases, self.template, "descriptions.template"),
                            phrases, provenance)
