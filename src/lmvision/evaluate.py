"""Test a checkpoint and write its own run record.

    lmvision-eval ckpt_path=outputs/image_classifier/2026-11-23/10-00-00/checkpoints/last.ckpt
    lmvision-eval ckpt_path=... data.batch_size=512     # override what you like
    lmvision-eval ckpt_path=... trainer=ddp_cpu         # the same metrics with two processes
    lmvision-eval ckpt_path=<a pixel_lm run's checkpoint> +strategy.temperature=0.7

An option that only the trained strategy has takes a ``+`` (the command line is composed with
``strategy=image_classifier`` before the checkpoint's own strategy replaces it).

The data, strategy, network, optimiser and seed of the training run are rebuilt from the
config stored in the checkpoint (its tokenizer too); options given on the command line take
precedence over it. The run record names the checkpoint and the choices it was trained with.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from lmvision.run.cli import main as run_cli
from lmvision.run.cli import run_task
from lmvision.config import config_dir

# Sections of the training config that define what was trained (and so what to rebuild).
MODEL_SECTIONS = ("data", "strategy", "backbone", "head", "text_encoder", "fusion", "descriptions",
                  "optimizer", "scheduler", "seed")
TAG_GROUPS = ("strategy", "data", "backbone")  # the W&B tags of a training run


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


def main() -> None:
    """``lmvision-eval``: user mistakes are one line and exit status 2 (see lmvision.run.cli)."""
    run_cli(hydra_main, "eval")


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, float]:
    """Test ``cfg.ckpt_path`` and write metrics.json and run.json in the run directory."""
    from lmvision.config import build
    from lmvision.run import checkpoints
    from lmvision.ranks import is_rank_zero
    from lmvision.run import record as runs
    from lmvision.config.validate import check_config

    out = build.run_dir(cfg)
    if is_rank_zero():
        runs.claim_run_dir(out, "eval", None)
    overrides = overrides if overrides is not None else _command_line_overrides()
    record = runs.RunRecord(out, cfg.get("seed"), "eval", build.group_choices())
    with build.failures_recorded(record):
        checkpoint = checkpoints.read(cfg.ckpt_path, "ckpt_path")
        trained_with = checkpoint.get("lmvision_choices") or {}
        if checkpoint.get("lmvision_config") is not None:
            cfg = with_training_config(cfg, checkpoint["lmvision_config"], overrides)
        choices = {**build.group_choices(), **training_choices(trained_with, overrides)}
        record.update(checkpoint=str(cfg.ckpt_path), trained_with=trained_with, choices=choices,
                      seed=cfg.get("seed"))
        check_config(cfg)
        datamodule, model = build.data_and_model(cfg, build.stored_tokenizer(checkpoint, cfg, choices),
                                                 build.stored_descriptions(checkpoint, cfg))
        build.record_descriptions(model, record, out)
        checkpoints.check_fits(checkpoint, model, cfg.ckpt_path, "ckpt_path",
                               cfg.strategy._target_, choices)
        build.check_holdout(checkpoint, datamodule, "ckpt_path")
        if "wandb" in (cfg.get("logger") or {}):  # dashboards group evals with their training
            cfg.logger.wandb.tags = [choices[g] for g in TAG_GROUPS if g in choices]
            cfg.logger.wandb.group = trained_with.get("experiment") or choices.get("strategy")
        trainer = build.trainer(cfg, [], build.instantiate_group(cfg.get("logger")),
                                enable_checkpointing=False)
    with runs.recorded(record, trainer, datamodule, build.config_container(cfg, resolve=True)):
        results = trainer.test(model, datamodule=datamodule, ckpt_path=str(cfg.ckpt_path))
        metrics = runs.flat_metrics(results[0] if results else {})
        record.finish(metrics)
    if trainer.is_global_zero:
        runs.print_summary(out, metrics, cfg.strategy.get("monitor"))
    return metrics


def with_training_config(cfg: DictConfig, stored: dict, overrides: list[str]) -> DictConfig:
    """Replace the model-defining sections of ``cfg`` by those stored at training time.

    A section the user chose on the command line (``data=digits``) is kept as composed; a value
    the user set inside a section (``data.batch_size=256``) is applied on top of the stored one.
    """
    keys = _override_keys(overrides)
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    for section in MODEL_SECTIONS:
        if section not in stored or section in keys:
            continue
        value = OmegaConf.create({section: stored[section]})[section]
        if isinstance(value, DictConfig):
            for key in keys:
                if key.startswith(section + "."):
                    given = OmegaConf.select(cfg, key, throw_on_missing=False)
                    OmegaConf.update(value, key[len(section) + 1:], given, merge=False, force_add=True)
        cfg[section] = value
    OmegaConf.set_struct(cfg, True)
    return cfg


def training_choices(trained_with: dict, overrides: list[str]) -> dict[str, str]:
    """The training run's group choices, except groups the user chose anew on the command line."""
    keys = _override_keys(overrides)
    return {group: option for group, option in trained_with.items()
            if group in MODEL_SECTIONS + ("experiment",) and group not in keys}


def _override_keys(overrides: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)]


def _command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


if __name__ == "__main__":
    main()
