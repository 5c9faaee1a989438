"""Train a strategy: compose the config, check it, build the run, fit, test, write the record.

    python -m lmvision.train                                   # the default experiment
    python -m lmvision.train data=digits backbone=resnet18     # swap parts by name
    python -m lmvision.train -m seed=0,1,2                     # a sweep
    python -m lmvision.train ckpt_path=<run>/checkpoints/last.ckpt   # resume a run, in place
    python -m lmvision.train --help                            # config groups and options

Only Hydra and OmegaConf are imported at module level: ``--help`` and ``--cfg job`` stay fast.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lmvision.config import config_dir
from lmvision.run.cli import main as run_cli
from lmvision.run.cli import run_task


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    return run_task(train_and_score, cfg)


def main() -> None:
    """``lmvision-train``: user mistakes are one line and exit status 2 (see lmvision.run.cli)."""
    run_cli(hydra_main, "train")


def train_and_score(cfg: DictConfig) -> float | None:
    """Train, then return the value a sweeper optimises (``optimized_metric``)."""
    metrics = train(cfg)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job described by ``cfg`` (or, with ``train=false``, test
    ``ckpt_path``); returns its flat metrics."""
    from lmvision.run.session import RunSession

    with RunSession.open(cfg, "train") as session:
        run = session.assemble()
        fitted, watch, saved = {}, RunSession.timed(), {"best": None, "last": None}
        with session.recorded(run):
            if session.fitting:
                with watch:
                    run.trainer.fit(run.model, datamodule=run.datamodule,
                                    ckpt_path=session.ckpt_path)
                fitted, saved = dict(run.trainer.callback_metrics), saved_checkpoints(run.trainer)
            tested, ckpt = {}, saved["best"] if session.fitting else session.ckpt_path
            if session.cfg.get("test", True) and not run.stopped:
                # after training: the best checkpoint if one was saved, else the current weights
                results = run.trainer.test(run.model, datamodule=run.datamodule, ckpt_path=ckpt)
                tested = results[0] if results else {}
                session.record.update(tested_checkpoint=ckpt)
            return session.finish({**fitted, **tested}, stopped=run.stopped,
                                  print_last=run.trainer.is_global_zero,
                                  fit_seconds=round(watch.seconds, 3), checkpoints=saved)


def saved_checkpoints(trainer) -> dict[str, str | None]:
    """Paths of the best checkpoint (by the strategy's monitor) and of ``last.ckpt``."""
    paths: dict[str, str | None] = {"best": None, "last": None}
    for callback in trainer.checkpoint_callbacks:
        kind = "best" if callback.monitor else "last"
        if paths[kind] is None and callback.best_model_path:
            paths[kind] = callback.best_model_path
    return paths


if __name__ == "__main__":
    main()
