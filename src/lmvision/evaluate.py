"""Test a checkpoint and write its own run record.

    lmvision-eval ckpt_path=outputs/image_classifier/2026-11-23/10-00-00/checkpoints/last.ckpt
    lmvision-eval ckpt_path=... data.batch_size=512     # override what you like

The data, strategy, backbone and head of the training run are rebuilt from the config stored
in the checkpoint; options given on the command line take precedence over it.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lmvision.config import config_dir

# Sections of the training config that define what was trained (and so what to rebuild).
MODEL_SECTIONS = ("data", "strategy", "backbone", "head", "text_encoder", "fusion", "seed")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, float]:
    """Test ``cfg.ckpt_path`` and write metrics.json and run.json in the run directory."""
    import torch
    from hydra.utils import instantiate

    from lmvision import build, runs
    from lmvision.text.tokenizers import tokenizer_from_state

    out = build.run_dir(cfg)
    record = runs.RunRecord(out, cfg.seed, "eval", build.group_choices())
    with build.clear_errors(record):
        ckpt_path = Path(str(cfg.ckpt_path)).expanduser()
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except Exception as err:  # a truncated or foreign file
            raise ValueError(f"ckpt_path={ckpt_path}: not a readable checkpoint ({err})") from err
        stored = checkpoint.get("lmvision_config")
        if stored is not None:
            cfg = with_training_config(cfg, stored, overrides if overrides is not None
                                       else _command_line_overrides())
        record.update(checkpoint=str(ckpt_path.resolve()), trained_with=checkpoint.get("lmvision_choices"))
        stored_tokenizer = checkpoint.get("lmvision_tokenizer")
        tokenizer = tokenizer_from_state(stored_tokenizer) if stored_tokenizer else None
        datamodule, model = build.data_and_model(cfg, tokenizer)
        loggers = build.instantiate_group(cfg.get("logger"))
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[],
                              enable_checkpointing=False)
    with runs.recorded(record, trainer, datamodule, build.config_container(cfg, resolve=True)):
        results = trainer.test(model, datamodule=datamodule, ckpt_path=str(ckpt_path))
        metrics = runs.flat_metrics(results[0] if results else {})
        record.finish(metrics)
    if trainer.is_global_zero:
        runs.print_summary(out, metrics)
    return metrics


def with_training_config(cfg: DictConfig, stored: dict, overrides: list[str]) -> DictConfig:
    """Replace the model-defining sections of ``cfg`` by those stored at training time.

    A section the user chose on the command line (``data=digits``) is kept as composed; a value
    the user set inside a section (``data.batch_size=256``) is applied on top of the stored one.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    keys = [o.key_or_group for o in parsed]
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
    return cfg


def _command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


if __name__ == "__main__":
    main()
