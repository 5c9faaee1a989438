"""Train a strategy: compose the config, instantiate, fit, test, write the run record.

    python -m lmvision.train                                   # the default experiment
    python -m lmvision.train data=digits backbone=resnet18     # swap parts by name
    python -m lmvision.train -m seed=0,1,2                     # a sweep
    python -m lmvision.train --help                            # config groups and options

Only Hydra and OmegaConf are imported at module level: ``--help`` and ``--cfg job`` stay fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lmvision.config import config_dir


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job described by ``cfg``; returns its flat metrics."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from lmvision import build, runs
    from lmvision.callbacks import ConfigInCheckpoint

    out = build.run_dir(cfg)
    record = runs.RunRecord(out, cfg.seed, "train", build.group_choices())
    with build.clear_errors(record):
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path is not None and not Path(str(ckpt_path)).expanduser().is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file to resume from")
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, model = build.data_and_model(cfg)
        callbacks = build.instantiate_group(cfg.get("callbacks"))
        callbacks.append(ConfigInCheckpoint(build.config_container(cfg, resolve=False),
                                            build.group_choices()))
        loggers = build.instantiate_group(cfg.get("logger"))
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    with runs.recorded(record, trainer, datamodule, build.config_container(cfg, resolve=True)):
        fit_metrics, fit_seconds = {}, 0.0
        if cfg.get("train", True):
            started = time.perf_counter()
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            fit_seconds = time.perf_counter() - started
            fit_metrics = dict(trainer.callback_metrics)
        test_metrics = {}
        if cfg.get("test", True):
            # after training: the best checkpoint if one was saved, else the current weights
            ckpt = checkpoints(trainer)["best"] if cfg.get("train", True) else ckpt_path
            results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt)
            test_metrics = results[0] if results else {}
            record.update(tested_checkpoint=ckpt)
        metrics = runs.flat_metrics(fit_metrics, test_metrics)
        record.finish(metrics, fit_seconds=round(fit_seconds, 3), checkpoints=checkpoints(trainer))
    if trainer.is_global_zero:
        runs.print_summary(out, metrics)
    return metrics


def checkpoints(trainer) -> dict[str, str | None]:
    """Paths of the best and last checkpoints of this fit (``None`` where none was saved)."""
    callback = trainer.checkpoint_callback
    if callback is None or not callback.dirpath:
        return {"best": None, "last": None}
    last = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return {"best": callback.best_model_path or None,
            "last": callback.last_model_path or (str(last) if last.is_file() else None)}


if __name__ == "__main__":
    main()
