"""Train a strategy: compose the config, check it, instantiate, fit, test, write the run record.

    python -m lmvision.train                                   # the default experiment
    python -m lmvision.train data=digits backbone=resnet18     # swap parts by name
    python -m lmvision.train -m seed=0,1,2                     # a sweep
    python -m lmvision.train --help                            # config groups and options

Only Hydra and OmegaConf are imported at module level: ``--help`` and ``--cfg job`` stay fast.
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

from lmvision.run.cli import main as run_cli
from lmvision.run.cli import run_task
from lmvision.config import config_dir
from lmvision.errors import Preempted

# what run.json's `resumed` says of a requeued job that had saved no checkpoint yet
NO_CHECKPOINT_YET = "none: stopped before its first checkpoint, started over"


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
    """Run one training job described by ``cfg``; returns its flat metrics."""
    import pytorch_lightning as pl

    from lmvision.config import build
    from lmvision.ranks import is_rank_zero
    from lmvision.run import checkpoints
    from lmvision.run import record as runs
    from lmvision.run.callbacks import RunState, StopAfterEpochs
    from lmvision.run.preemption import Requeue
    from lmvision.config.validate import check_config

    out = build.run_dir(cfg)
    ckpt_path = cfg.get("ckpt_path")
    fitting = cfg.get("train", True)
    same_job = False
    if fitting and not ckpt_path:  # a requeued SLURM job continues its run (lmvision.run.preemption)
        same_job, ckpt_path = runs.requeued_checkpoint(out)
    resuming = is_rank_zero() and runs.claim_run_dir(out, "train" if fitting else "eval",
                                                          ckpt_path, same_job)
    choices = build.group_choices()
    record = runs.RunRecord(out, cfg.get("seed"), "train", choices,
                            resumed_from=(ckpt_path or NO_CHECKPOINT_YET) if resuming else None)
    with build.failures_recorded(record):
        check_config(cfg)
        check_run_options(cfg)
        if fitting and ckpt_path and not resuming:
            record.update(resumed_from=str(ckpt_path))  # a checkpoint that is not in a run dir
        stored = checkpoints.read(ckpt_path, "ckpt_path") if ckpt_path else None
        init = checkpoints.read(cfg.init_from, "init_from") if cfg.get("init_from") else None
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        tokenizer = build.stored_tokenizer(stored or init, cfg, choices)
        datamodule, model = build.data_and_model(cfg, tokenizer,
                                                 build.stored_descriptions(stored, cfg))
        build.record_descriptions(model, record, out)
        build.record_skipped(datamodule, record, out)
        if stored is not None:
            checkpoints.check_fits(stored, model, ckpt_path, "ckpt_path", cfg.strategy._target_,
                                   choices)
            build.check_holdout(stored, datamodule, "ckpt_path")
        if init is not None:
            loaded = checkpoints.load_weights(model.net, init, cfg.init_from,
                                              cfg.get("init_from_prefix"))
            record.update(init_from=loaded)
            if record.enabled:
                print(checkpoints.describe_loaded(loaded), flush=True)
        if record.previous_wandb_id and "wandb" in (cfg.get("logger") or {}):
            cfg.logger.wandb.id = record.previous_wandb_id  # continue the same W&B run
        callbacks = build.instantiate_group(cfg.get("callbacks"))
        callbacks.append(RunState(build.config_container(cfg, resolve=False), choices))
        if cfg.get("stop_after_epochs") is not None:
            callbacks.append(StopAfterEpochs(cfg.stop_after_epochs))
        if fitting:
            callbacks.append(Requeue(out / "checkpoints" / "last.ckpt"))
        trainer = build.trainer(cfg, callbacks, build.instantiate_group(cfg.get("logger")))
    try:
        metrics = fit_and_test(cfg, trainer, model, datamodule, record, callbacks, fitting,
                               ckpt_path)
    except Preempted as stop:
        stop.hand_over()  # submitit requeues the job and exits; in other processes it returns
        raise SystemExit(0) from None
    if trainer.is_global_zero:
        runs.print_summary(out, metrics, cfg.strategy.get("monitor"))
    return metrics


def fit_and_test(cfg: DictConfig, trainer, model, datamodule, record, callbacks: list,
                 fitting: bool, ckpt_path: str | None) -> dict[str, float]:
    from lmvision.config import build
    from lmvision.run import record as runs

    with runs.recorded(record, trainer, datamodule, build.config_container(cfg, resolve=True)):
        fit_metrics, fit_seconds, saved = {}, 0.0, {"best": None, "last": None}
        if fitting:
            started = time.perf_counter()
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            fit_seconds = time.perf_counter() - started
            fit_metrics = dict(trainer.callback_metrics)
            saved = saved_checkpoints(trainer)  # before testing reloads callback states
        stopped = any(getattr(c, "stopped", False) for c in callbacks)  # stop_after_epochs
        test_metrics = {}
        if cfg.get("test", True) and not stopped:
            # after training: the best checkpoint if one was saved, else the current weights
            ckpt = saved["best"] if fitting else ckpt_path
            results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt)
            test_metrics = results[0] if results else {}
            record.update(tested_checkpoint=ckpt)
        metrics = runs.flat_metrics(fit_metrics, test_metrics)
        record.finish(metrics, status="stopped" if stopped else "completed",
                      fit_seconds=round(fit_seconds, 3), checkpoints=saved)
    return metrics


def check_run_options(cfg: DictConfig) -> None:
    """The run-wide options of train.yaml, which no class signature checks."""
    from lmvision.errors import UserError

    if not cfg.get("train", True) and not cfg.get("ckpt_path"):
        raise UserError("train=false tests a checkpoint: give ckpt_path=<checkpoint to test>")
    if cfg.get("ckpt_path") and cfg.get("init_from"):
        raise UserError("give ckpt_path (resume a run) or init_from (start a new run from "
                        "another run's weights), not both")
    if cfg.get("init_from_prefix") and not cfg.get("init_from"):
        raise UserError("init_from_prefix names a part of the weights of init_from=<checkpoint>; "
                        "give init_from too")
    stop = cfg.get("stop_after_epochs")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < 1):
        raise UserError(f"stop_after_epochs={stop!r}: expected a whole number of epochs, at least 1")


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
