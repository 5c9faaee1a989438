"""Turn a composed config into the pieces of a run (shared by train and evaluate)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lmvision.errors import UserError, user_error_in


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


def data_and_model(cfg: DictConfig, tokenizer: Any | None = None,
                   descriptions: Any | None = None) -> tuple[Any, Any]:
    """Instantiate the datamodule and the strategy with its network.

    A strategy that reads class descriptions declares ``descriptions: null`` (and
    ``classes: null``): they are built from ``descriptions=`` for the data's classes, unless
    given (a resumed or evaluated checkpoint carries its own).

    A strategy that reads text declares ``tokenizer: null`` in its config (and its network
    ``text_encoder: null``). The tokenizer is then built from ``text_encoder.tokenizer`` (with
    the training split's text, which a tokenizer trained from scratch learns from) unless one
    is given (a resumed or evaluated checkpoint carries its own), and handed to the
    datamodule's collate, to the text encoder and to the strategy, so the three always agree.
    """
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data.datamodule)
    if "tokenizer" not in cfg.strategy:
        return datamodule, instantiate(cfg.strategy)
    # a captioner's tokenizer, and that of a pixel model conditioned on captions, learns from
    # the training captions; the others' from the text
    own = "caption_tokenizer" in cfg.strategy
    captions = own or "caption" in (OmegaConf.select(cfg, "strategy.net.conditions") or [])
    node = (cfg.strategy.caption_tokenizer if own
            else OmegaConf.select(cfg, "text_encoder.tokenizer"))
    if node is None:
        raise UserError("this strategy reads text: choose a text encoder, e.g. text_encoder=minilm")
    if captions:  # it reads the captions: the data must have them
        datamodule.require_strings("caption")
    if tokenizer is None:
        tokenizer = instantiate(node)(datamodule.train_texts("caption" if captions else "text"))
    net: dict[str, Any] = {}
    if "tokenizer" in cfg.strategy.net and cfg.strategy.net.tokenizer is None:
        net["tokenizer"] = tokenizer
    if "text_vocab_size" in cfg.strategy.net and cfg.strategy.net.text_vocab_size is None:
        net["text_vocab_size"] = len(tokenizer)
    if "text_encoder" in cfg.strategy.net and cfg.strategy.net.text_encoder is None:
        net["text_encoder"] = instantiate(cfg.text_encoder.encoder)(tokenizer=tokenizer)
    extra: dict[str, Any] = {}
    if "descriptions" in cfg.strategy and cfg.strategy.descriptions is None:
        if descriptions is None:
            descriptions = instantiate(cfg.descriptions)(datamodule.classes)
            descriptions.config = descriptions_config(cfg)
        extra["descriptions"] = descriptions
    if "classes" in cfg.strategy and cfg.strategy.classes is None:
        extra["classes"] = list(datamodule.classes)
    model = instantiate(cfg.strategy, tokenizer=tokenizer, net=net, **extra)
    # what it reads per batch, and fields it tokenises its own way (a captioner's captions)
    datamodule.use_tokenizer(tokenizer, getattr(model, "text_keys", ()),
                             getattr(model, "tokenizers_per_key", None))
    if getattr(model, "raw_pixels", False):  # it models pixel values: no normalisation
        datamodule.use_raw_pixels(augment=getattr(model, "augment_pixels", False))
    return datamodule, model


def trainer(cfg: DictConfig, callbacks: list, loggers: list, **kwargs: Any):
    """The Lightning Trainer; a setting Lightning refuses becomes a UserError naming ``trainer``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from lightning_fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect() and "plugins" not in cfg.trainer and "plugins" not in kwargs:
        # the environment Lightning would choose, without its requeue on SIGUSR1: a job warned
        # by SLURM is saved and requeued by lmvision and submitit (lmvision.run.preemption)
        kwargs["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, MisconfigurationException):
            raise UserError(f"trainer: {err.__cause__}") from err
        raise


def record_skipped(datamodule, record, out: Path) -> None:
    """With ``data.on_bad_item=skip``: the unreadable items left out, listed in
    ``skipped_items.json`` and counted in run.json."""
    skipped = getattr(datamodule.dataset, "skipped", None)
    if skipped and record.enabled:
        from lmvision.files import write_json

        write_json(out / "skipped_items.json", skipped)
        record.update(data_skipped=len(skipped))
        print(f"data.on_bad_item=skip: left out {len(skipped)} unreadable items "
              f"(listed in {out / 'skipped_items.json'})", flush=True)


@contextmanager
def failures_recorded(record):
    """Mark run.json failed with the error (and re-raise) if assembling the run fails.

    A user's mistake wrapped by Hydra (``InstantiationException``) is raised as itself.
    """
    try:
        yield
    except BaseException as err:
        user = user_error_in(err)
        record.fail(user or err)
        if user is not None and user is not err:
            raise user from err
        raise


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


def record_descriptions(model: Any, record: Any, out: Path) -> None:
    """Write the class descriptions a strategy reads to ``<run dir>/descriptions.json`` and
    their provenance (file, or model, prompt and settings) into the run record."""
    from lmvision.files import write_json

    descriptions = getattr(model, "descriptions", None)
    if descriptions is None or not record.enabled:
        return
    write_json(out / "descriptions.json", descriptions.state())
    record.update(descriptions=descriptions.provenance)


def descriptions_config(cfg: DictConfig) -> dict:
    """The resolved ``descriptions`` config, without the options that only say where or how
    descriptions are computed (a cache directory, a device), not what they are."""
    config = OmegaConf.to_container(cfg.descriptions, resolve=True)
    for key in ("cache_dir", "device", "wait_seconds", "batch_size"):
        config.pop(key, None)
    return config


def stored_descriptions(checkpoint: dict | None, cfg: DictConfig) -> Any | None:
    """The class descriptions a checkpoint carries (what the run was trained with), when this
    run reads descriptions and asks for the same ones (the same resolved ``descriptions``
    config); a run that asks for other descriptions builds them."""
    from lmvision.text.descriptions import Descriptions

    if (not checkpoint or "lmvision_descriptions" not in checkpoint
            or "descriptions" not in cfg.strategy):
        return None
    stored = Descriptions.from_state(checkpoint["lmvision_descriptions"])
    if stored.config is not None and stored.config != descriptions_config(cfg):
        return None  # this run asks for other descriptions
    return stored


def check_holdout(checkpoint: dict | None, datamodule: Any, option: str) -> None:
    """Refuse to resume or evaluate a checkpoint with other held-out classes than it was
    trained without: its "unseen" metrics would count classes it was trained on."""
    if not checkpoint or "lmvision_unseen_classes" not in checkpoint:
        return
    trained = list(checkpoint["lmvision_unseen_classes"])
    now = [datamodule.classes[i] for i in getattr(datamodule, "unseen_classes", [])]
    if trained != now:
        raise UserError(
            f"{option}: the checkpoint was trained with held-out classes "
            f"[{', '.join(trained) or 'none'}] but data.holdout_classes and seed now give "
            f"[{', '.join(now) or 'none'}]; use the training run's seed and data.holdout_classes")


def stored_tokenizer(checkpoint: dict | None, cfg: DictConfig, choices: dict[str, str]) -> Any | None:
    """The tokenizer a checkpoint carries, when this run reads text with the same text encoder
    (``choices``: this run's group choices)."""
    from lmvision.text.tokenizers import tokenizer_from_state

    if not checkpoint or "lmvision_tokenizer" not in checkpoint or "tokenizer" not in cfg.strategy:
        return None
    trained_with = (checkpoint.get("lmvision_choices") or {}).get("text_encoder")
    if trained_with is not None and trained_with != choices.get("text_encoder", trained_with):
        return None
    return tokenizer_from_state(checkpoint["lmvision_tokenizer"])
