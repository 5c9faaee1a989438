"""Class descriptions written by a language model (``descriptions=language_model``).

Any Hugging Face causal LM writes them from a prompt; the result is cached on disk under a hash
of everything that shaped it, with that provenance beside it, and a cache hit never loads the
model. See :mod:`lmvision.text.descriptions` for the other sources and the matching rules.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmvision import checks
from lmvision.errors import UserError
from lmvision.text.descriptions import (DEFAULT_PROMPT, TEMPLATE, Descriptions, _names,
                                        apply_template,
                                        display_name, match_classes)


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
            raise checks.ArgumentError("prompt", "must contain {class_name}")
        for option, value in (("num_per_class", num_per_class), ("max_new_tokens", max_new_tokens),
                              ("answers_per_round", answers_per_round),
                              ("max_rounds", max_rounds), ("batch_size", batch_size)):
            checks.whole_number(option, value)
        if do_sample:
            checks.number("temperature", temperature, low=0.0, low_open=True)
        checks.number("top_p", top_p, low=0.0, high=1.0, low_open=True)
        checks.whole_number("top_k", top_k, minimum=0)
        if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
            raise checks.ArgumentError("device", "choose auto, cpu, cuda or cuda:<n>", device)
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
        resolved_revision = resolved(self.name_or_path, self.revision)
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


def resolved(name_or_path: str, revision: str | None) -> str | None:
    """The commit a hub model's ``revision`` names (from the local cache, without network when
    it is there); ``None`` for a local directory or when it cannot be told."""
    if Path(str(name_or_path)).expanduser().exists():
        return None
    try:
        from huggingface_hub import resolve_revision  # huggingface_hub >= 1.0
    except ImportError:
        return None
    for local in (True, False):
        try:  # a ResolvedRevision is the commit hash (a str)
            return str(resolve_revision(name_or_path, revision=revision, local_files_only=local))
        except Exception:  # noqa: BLE001 - provenance only: an unknown revision is recorded as such
            continue
    return None


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
