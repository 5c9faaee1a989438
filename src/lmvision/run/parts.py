"""A run's pieces rebuilt with what a checkpoint carries: the run session's building blocks.

A checkpoint stores the config and group choices of its run, the tokenizer and class
descriptions of its text side and the classes it held out; :func:`build_parts` rebuilds the
datamodule, text side and strategy with those, :func:`load_strategy` another run's strategy
with its weights (``lmvision-explain``'s ``classifier_path``).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from lmvision.errors import UserError
from lmvision.run import checkpoints, resume


def build_parts(cfg: DictConfig, stored: dict, choices: dict[str, str], before_text=None):
    """``(datamodule, text side, strategy)`` of ``cfg``, with the tokenizer and descriptions
    that ``stored`` (a checkpoint) carries; ``before_text(datamodule)`` runs once the data is
    built (a resume's last checks)."""
    from lmvision.config import build
    from lmvision.text.descriptions import Descriptions
    from lmvision.text.tokenizers import tokenizer_from_state

    recipe = build.text_recipe(cfg)
    tokenizer = stored_tokenizer(stored, choices)
    datamodule = build.datamodule(cfg, recipe, tokenizer and tokenizer_from_state(tokenizer))
    if before_text is not None:
        before_text(datamodule)
    descriptions = stored_descriptions(stored, cfg)
    text = build.text_side(cfg, recipe, datamodule,
                           descriptions and Descriptions.from_state(descriptions))
    return datamodule, text, build.strategy(cfg, text)


def load_strategy(base: DictConfig, path: str, option: str):
    """The strategy of a checkpoint (not this run's), rebuilt from its stored config, with its
    weights, in eval mode; and the datamodule it was trained with (``classifier_path`` of
    ``lmvision-explain``)."""
    checkpoint = checkpoints.read(path, option)
    stored = checkpoint.get("lmvision_config")
    if stored is None:
        raise UserError(f"{option}={path}: not an lmvision checkpoint (no stored config)")
    cfg = resume.training_config(base, stored, [])
    choices = checkpoint.get("lmvision_choices") or {}
    datamodule, _, model = build_parts(cfg, checkpoint, choices)
    checkpoints.check_fits(checkpoint, model, path, option, None, choices)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), datamodule


def check_run_options(cfg: DictConfig) -> None:
    """The run-wide options of train.yaml, which no class signature checks."""
    from lmvision.checks import ArgumentError, whole_number

    if not cfg.get("train", True) and not cfg.get("ckpt_path"):
        raise UserError("train=false tests a checkpoint: give ckpt_path=<checkpoint to test>")
    if cfg.get("ckpt_path") and cfg.get("init_from"):
        raise UserError("give ckpt_path (resume a run) or init_from (start a new run from "
                        "another run's weights), not both")
    if cfg.get("init_from_prefix") and not cfg.get("init_from"):
        raise UserError("init_from_prefix names a part of the weights of init_from=<checkpoint>; "
                        "give init_from too")
    stop = cfg.get("stop_after_epochs")
    if stop is not None:
        try:
            whole_number("stop_after_epochs", stop)
        except ArgumentError as err:
            raise UserError(f"stop_after_epochs={stop!r}: expected a whole number of epochs, "
                            "at least 1") from err


def stored_tokenizer(checkpoint: dict, choices: dict[str, str]) -> dict | None:
    """The tokenizer state a checkpoint carries, when this run reads text with the same text
    encoder (``choices``: this run's group choices)."""
    if "lmvision_tokenizer" not in checkpoint:
        return None
    trained_with = (checkpoint.get("lmvision_choices") or {}).get("text_encoder")
    if trained_with is not None and trained_with != choices.get("text_encoder", trained_with):
        return None
    return checkpoint["lmvision_tokenizer"]


def stored_descriptions(checkpoint: dict, cfg: DictConfig) -> dict | None:
    """The class descriptions a checkpoint carries (what the run was trained with), when this
    run asks for the same ones (the same resolved ``descriptions`` config)."""
    from lmvision.config.build import descriptions_config

    state = checkpoint.get("lmvision_descriptions")
    if state is None or OmegaConf.select(cfg, "inputs.text.descriptions") is None:
        return None
    if state.get("config") is not None and state["config"] != descriptions_config(cfg):
        return None  # this run asks for other descriptions
    return state


def check_holdout(checkpoint: dict, datamodule) -> None:
    """Refuse to resume or evaluate a checkpoint with other held-out classes than it was
    trained without: its "unseen" metrics would count classes it was trained on."""
    if "lmvision_unseen_classes" not in checkpoint:
        return
    trained = list(checkpoint["lmvision_unseen_classes"])
    now = datamodule.class_split["unseen_classes"]
    if trained != now:
        raise UserError(
            f"ckpt_path: the checkpoint was trained with held-out classes "
            f"[{', '.join(trained) or 'none'}] but data.holdout_classes and seed now give "
            f"[{', '.join(now) or 'none'}]; use the training run's seed and data.holdout_classes")
