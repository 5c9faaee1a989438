"""Turn a composed config into the pieces of a run (shared by train and evaluate)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

# Errors in the user's options or data: reported in one line, before training starts.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, ImportError)


class UserError(Exception):
    """An error in the user's options or files; printed as one clear line."""


def run_dir(cfg: DictConfig) -> Path:
    """The Hydra run directory (``paths.output_dir``), created if needed."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def instantiate_group(node: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a dict-like group (callbacks, loggers)."""
    from hydra.utils import instantiate

    if not node:
        return []
    return [instantiate(c) for c in node.values() if isinstance(c, DictConfig) and "_target_" in c]


def data_and_model(cfg: DictConfig, tokenizer: Any | None = None) -> tuple[Any, Any]:
    """Instantiate the datamodule and the strategy.

    A strategy that reads text declares ``tokenizer: null`` in its config: the tokenizer is then
    built from ``text_encoder.tokenizer`` (with the training split's text, which a tokenizer
    trained from scratch learns from), unless one is given (evaluation passes the one stored in
    the checkpoint), and handed to both the datamodule's collate and the strategy, so the two
    always agree.
    """
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data.datamodule)
    extra = {}
    if "tokenizer" in cfg.strategy:
        node = OmegaConf.select(cfg, "text_encoder.tokenizer")
        if node is None:
            raise UserError("this strategy reads text: choose a text encoder, e.g. text_encoder=minilm")
        if tokenizer is None:
            tokenizer = instantiate(node)(datamodule.train_texts())
        datamodule.use_tokenizer(tokenizer)
        extra["tokenizer"] = tokenizer
    return datamodule, instantiate(cfg.strategy, **extra)


def config_container(cfg: DictConfig, resolve: bool) -> dict:
    """The config as plain containers, without Hydra's own node."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=False)


def group_choices() -> dict[str, str]:
    """Which option of each config group this run uses (``{"data": "shapes", ...}``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}


@contextmanager
def clear_errors(record=None):
    """Turn configuration and data errors into one line on stderr and exit status 2.

    Errors raised while a run is being assembled (bad options, missing files, bad rows) are the
    user's to fix: a traceback through Hydra and Lightning would hide the message.
    """
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except (InstantiationException, OmegaConfBaseException, UserError, *USER_ERRORS) as err:
        cause = err
        while isinstance(cause, (InstantiationException, OmegaConfBaseException)) and cause.__cause__:
            cause = cause.__cause__
        if record is not None:
            record.fail(cause)
        message = str(cause).strip() or type(cause).__name__
        full_key = getattr(err, "full_key", None)
        where = f" (config: {full_key})" if full_key and full_key not in message else ""
        print(f"lmvision: error: {message}{where}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
