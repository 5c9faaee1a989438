"""Class descriptions: text about each class, from a file, a language model, or a control.

Every source is called with the dataset's class names and returns :class:`Descriptions`: the
texts of each class (``by_class``, in class order) and where they came from (``provenance``,
written into the run record). Classes and descriptions are matched **by name**, never by
position: a missing, extra or misspelled class is one error that lists them.

Sources (config group ``descriptions=``):

* :class:`FileDescriptions` (``file``): a YAML or JSON mapping ``class name -> [phrases]``,
  shipped with lmvision (``shapes_color_shape``, ``digits``, ``cifar10``, ``cifar100``...) or
  given by path;
* :class:`LanguageModelDescriptions` (``language_model``): any Hugging Face causal LM writes
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
import os
import re
import string
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
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


# -- language model --------------------------------------------------------------------------
class LanguageModelDescriptions:
    """Descriptions written by a Hugging Face causal language model, cached on disk.

    The cache file is ``<cache_dir>/<hash>.json``, the hash taken over the model (name or
    path, revision; for a local directory also its files' sizes and times), the prompt, the
    generation settings and the classes. It holds the descriptions and their provenance; a
    second call with the same inputs reads it and never loads the model. Under a
    multi-process launch only the process of global rank 0 generates; the others wait for its
    cache file.

    Args:
        name_or_path: A hub model id (e.g. ``gpt2``) or a local directory.
        revision: Hub revision (branch, tag or commit); ``None`` for the default.
        prompt: Prompt template with ``{class_name}``; the model's continuation is parsed as a
            list (one item per line, bullets and numbers removed).
        num_per_class: Descriptions kept per class.
        max_new_tokens: Tokens generated per answer.
        do_sample: Sample (``True``) or decode greedily.
        temperature, top_k, top_p: Sampling settings.
        answers_per_round: Answers generated per class in one round; rounds repeat (at most
            ``max_rounds``) until every class has ``num_per_class`` distinct descriptions.
        max_rounds: Rounds of generation before giving up on a class.
        batch_size: Prompts per ``generate`` call.
        seed: Seed of the sampling.
        cache_dir: Where generated descriptions are cached.
        template: As in :class:`FileDescriptions`.
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:<n>``.
        wait_seconds: How long a process of rank > 0 waits for rank 0's cache file.
    """

    # what lmvision-prefetch fetches for a node of this class: (kind, option, revision option)
    downloads = (("model", "name_or_path", "revision"),)

    def __init__(self, name_or_path: str, revision: str | None = None, prompt: str = DEFAULT_PROMPT,
                 num_per_class: int = 5, max_new_tokens: int = 48, do_sample: bool = True,
                 temperature: float = 0.7, top_k: int = 0, top_p: float = 0.95,
                 answers_per_round: int = 2, max_rounds: int = 5, batch_size: int = 8,
                 seed: int = 0, cache_dir: str | os.PathLike = "~/.cache/lmvision/descriptions",
                 template: str = TEMPLATE, device: str = "auto",
                 wait_seconds: float = 3600.0) -> None:
        if "{class_name}" not in prompt:
            raise UserError("descriptions.prompt must contain {class_name}")
        for option, value in (("num_per_class", num_per_class), ("max_new_tokens", max_new_tokens),
                              ("answers_per_round", answers_per_round),
                              ("max_rounds", max_rounds), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"descriptions.{option}={value!r}: expected a whole number >= 1")
        if do_sample and not temperature > 0:
            raise UserError(f"descriptions.temperature={temperature!r}: must be > 0 when sampling")
        if not 0 < top_p <= 1 or top_k < 0:
            raise UserError(f"descriptions.top_p must be in (0, 1] and top_k >= 0, got top_p="
                            f"{top_p!r}, top_k={top_k!r}")
        if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
            raise UserError(f"descriptions.device={device!r}: choose auto, cpu, cuda or cuda:<n>")
        self.name_or_path, self.revision, self.prompt = str(name_or_path), revision, prompt
        self.settings = {"num_per_class": num_per_class, "max_new_tokens": max_new_tokens,
                         "do_sample": bool(do_sample), "temperature": float(temperature),
                         "top_k": int(top_k), "top_p": float(top_p),
                         "answers_per_round": answers_per_round, "max_rounds": max_rounds,
                         "seed": int(seed)}
        self.batch_size, self.template, self.device = batch_size, template, str(device)
        self.wait_seconds = float(wait_seconds)
        self.cache_dir = Path(cache_dir).expanduser()

    # -- cache --------------------------------------------------------------------------------
    def model_identity(self) -> dict[str, Any]:
        """What identifies the model: name or path, revision, and a local directory's files."""
        identity: dict[str, Any] = {"name_or_path": self.name_or_path, "revision": self.revision}
        local = Path(self.name_or_path).expanduser()
        if local.is_dir():
            identity["name_or_path"] = str(local.resolve())
            identity["files"] = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime))
                                       for p in local.iterdir() if p.is_file())
        return identity

    def cache_file(self, classes: Sequence[str]) -> Path:
        key = json.dumps({"model": self.model_identity(), "prompt": self.prompt,
                          "settings": self.settings, "classes": list(classes)}, sort_keys=True)
        return self.cache_dir / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")

    def __call__(self, classes: Sequence[str]) -> Descriptions:
        from lmvision.files import read_json, write_json

        from lmvision.ranks import is_rank_zero

        file = self.cache_file(classes)
        if not file.is_file() and not is_rank_zero():
            wait_for(file, self.wait_seconds)  # rank 0 writes it: every process reads the same
        cached = read_json(file) if file.is_file() else None
        if cached and "phrases" in cached:
            phrases = match_classes(cached["phrases"], classes, f"description cache {file}")
            provenance = {**cached["provenance"], "template": self.template,
                          "cache_file": str(file), "cache_hit": True}
        else:
            phrases, provenance = self.generate(list(classes))
            write_json(file, {"provenance": provenance, "phrases": phrases})
            provenance = {**provenance, "cache_file": str(file), "cache_hit": False}
        return Descriptions(apply_template(phrases, self.template, "descriptions.template"),
                            phrases, provenance)

    # -- generation ---------------------------------------------------------------------------
    def generate(self, classes: list[str]) -> tuple[dict[str, list[str]], dict[str, Any]]:
        """Load the model and write ``num_per_class`` descriptions of each class."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lmvision.text.hub import from_pretrained

        kwargs = {"revision": self.revision} if self.revision else {}
        tokenizer = from_pretrained(AutoTokenizer, self.name_or_path, "descriptions.name_or_path",
                                    **kwargs)
        model = from_pretrained(AutoModelForCausalLM, self.name_or_path,
                                "descriptions.name_or_path", **kwargs)
        device = self.device if self.device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"descriptions.device={self.device!r}: no CUDA device here")
        model.to(device).eval()
        tokenizer.padding_side = "left"  # a decoder continues the prompt's last token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        s = self.settings
        # greedy decoding writes the same answer every time: one answer, one round
        rounds, per_round = ((s["max_rounds"], s["answers_per_round"]) if s["do_sample"] else (1, 1))
        found: dict[str, list[str]] = {c: [] for c in classes}
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda):  # leave the run's random state alone
            torch.manual_seed(s["seed"])
            for _ in range(rounds):
                todo = [c for c in classes if len(found[c]) < s["num_per_class"]]
                if not todo:
                    break
                prompts = [(c, self.prompt.format(class_name=display_name(c)))
                           for c in todo for _ in range(per_round)]
                for start in range(0, len(prompts), self.batch_size):
                    chunk = prompts[start:start + self.batch_size]
                    answers = self._complete(model, tokenizer, [p for _, p in chunk], device)
                    for (c, _), answer in zip(chunk, answers):
                        for item in parse_list(answer):
                            if item not in found[c] and len(found[c]) < s["num_per_class"]:
                                found[c].append(item)
        resolved_revision = getattr(model.config, "_commit_hash", None)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # give the language model's memory back to training
        short = {c: len(v) for c, v in found.items() if len(v) < s["num_per_class"]}
        if short:
            advice = ("raise max_rounds or max_new_tokens" if s["do_sample"]
                      else "sample (do_sample=true) or raise max_new_tokens")
            raise UserError(
                f"descriptions.name_or_path={self.name_or_path!r}: after {rounds} round(s) "
                f"the model wrote fewer than {s['num_per_class']} usable descriptions for "
                f"{_names([f'{c} ({n})' for c, n in short.items()])}; {advice}, lower "
                "num_per_class, or change the prompt")
        provenance = {"source": "language_model", "model": self.model_identity(),
                      "resolved_revision": resolved_revision,
                      "prompt": self.prompt, "settings": s, "classes": classes,
                      "template": self.template,
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        return found, provenance

    def _complete(self, model, tokenizer, prompts: list[str], device: str) -> list[str]:
        import torch

        s = self.settings
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        sampling = ({"do_sample": True, "temperature": s["temperature"], "top_k": s["top_k"],
                     "top_p": s["top_p"]} if s["do_sample"] else {"do_sample": False})
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=s["max_new_tokens"],
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
        return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def wait_for(file: Path, seconds: float) -> None:
    """Wait until ``file`` exists (another process writes it); a UserError after ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while not file.is_file():
        if time.monotonic() > deadline:
            raise UserError(f"waited {seconds:.0f} s for rank 0 to write the description cache "
                            f"{file}; did rank 0 fail?")
        time.sleep(1.0)


_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)]|[a-z][.)])\s*")


def parse_list(answer: str, max_words: int = 20) -> list[str]:
    """The items of a list-style answer: one per line, bullets and numbering removed; a line
    that starts a new question or answer ("Q:", "A:") ends the list."""
    items = []
    for line in answer.splitlines():
        if re.match(r"^\s*[QA]:", line):
            break
        item = _BULLET.sub("", line).strip().strip(".;,").strip()
        if item and len(item.split()) <= max_words and any(ch.isalpha() for ch in item):
            items.append(item)
    return items
