"""Test a checkpoint and write its own run record.

    lmvision-eval ckpt_path=outputs/image_classifier/2026-11-23/10-00-00/checkpoints/last.ckpt
    lmvision-eval ckpt_path=... data.batch_size=512     # override what you like
    lmvision-eval ckpt_path=... trainer=ddp_cpu         # the same metrics with two processes
    lmvision-eval ckpt_path=<a pixel_lm run's checkpoint> evaluation.probe.max_train=1000

The data, inputs, strategy, network, optimiser, evaluation extras and seed of the training run
are rebuilt from the config stored in the checkpoint (its tokenizer and descriptions too);
options given on the command line take precedence over it. An option that only the trained
strategy has takes a ``+`` (the command line is composed with ``strategy=image_classifier``
before the checkpoint's own strategy replaces it). The run record names the checkpoint and the
choices it was trained with.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lmvision.config import config_dir
from lmvision.run.cli import main as run_cli
from lmvision.run.cli import run_task

TAG_GROUPS = ("strategy", "data", "backbone")  # the W&B tags of a training run


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


def main() -> None:
    """``lmvision-eval``: user mistakes are one line and exit status 2 (see lmvision.run.cli)."""
    run_cli(hydra_main, "eval")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test ``cfg.ckpt_path`` and write metrics.json and run.json in the run directory."""
    from lmvision.run.session import RunSession

    with RunSession.open(cfg, "eval") as session:
        trained_with = session.checkpoint.get("lmvision_choices") or {}
        session.record.update(checkpoint=str(session.ckpt_path), trained_with=trained_with,
                              choices=session.choices, seed=session.cfg.get("seed"))
        logger = session.cfg.get("logger") or {}
        if "wandb" in logger:  # dashboards group evaluations with their training
            logger.wandb.tags = [session.choices[g] for g in TAG_GROUPS if g in session.choices]
            logger.wandb.group = trained_with.get("experiment") or session.choices.get("strategy")
        run = session.assemble(callbacks=False, enable_checkpointing=False)
        with session.recorded(run):
            results = run.trainer.test(run.model, datamodule=run.datamodule,
                                       ckpt_path=str(session.ckpt_path))
            return session.finish(results[0] if results else {},
                                  print_last=run.trainer.is_global_zero)


if __name__ == "__main__":
    main()
