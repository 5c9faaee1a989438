"""The run session: one object owns a run's life, for every entry point.

    with RunSession.open(cfg, "train") as session:
        run = session.assemble()                  # data, text side, strategy, trainer
        ...                                       # fit, test
        metrics = session.finish(metrics)

:meth:`RunSession.open` claims the run directory (refusing one that holds another run), takes
its lock (refusing a run that is still running), reads the checkpoint, restores the config a
resume or an evaluation runs with (refusing a resume that would change what is learned) and
opens the run record. A refused command touches nothing: a resume is accepted, and its record
continued, only after every check passed, its data included. :meth:`assemble` builds the run's
pieces in order, with what a checkpoint carries (tokenizer, descriptions, held-out classes)
and ``init_from``'s weights. Leaving the ``with`` block records the outcome: ``completed`` or
``stopped`` (by :meth:`finish`), ``failed`` (an error), ``requeued`` (a preempted SLURM job).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig

from lmvision.errors import Preempted, UserError, user_error_in
from lmvision.files import read_json, write_json
from lmvision.ranks import is_rank_zero
from lmvision.run import checkpoints, resume
from lmvision.run.lock import RunLock
from lmvision.run.parts import build_parts, check_holdout, check_run_options
from lmvision.run.record import RunRecord, flat_metrics, print_summary

# what run.json's `resumed` says of a requeued job that had saved no checkpoint yet
NO_CHECKPOINT_YET = "none: stopped before its first checkpoint, started over"


@dataclass
class Run:
    """The assembled pieces of a run."""

    datamodule: Any
    model: Any
    trainer: Any
    text: Any = None
    callbacks: list = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        """Whether ``stop_after_epochs`` ended the job before the run's last epoch."""
        return any(getattr(c, "stopped", False) for c in self.callbacks)


class RunSession:
    """A run's life (see the module docstring).

    Args:
        cfg: The composed config.
        job_type: ``train`` (fits, or with ``train=false`` tests ``ckpt_path``), ``eval``
            (tests ``ckpt_path``) or ``explain``.
    """

    def __init__(self, cfg: DictConfig, job_type: str) -> None:
        self.cfg, self.job_type = cfg, job_type
        self.out = Path(cfg.paths.output_dir)
        self.fitting = job_type == "train" and cfg.get("train", True)
        self.ckpt_path: str | None = cfg.get("ckpt_path")
        self.checkpoint: dict | None = None
        self.record: RunRecord | None = None
        self.lock: RunLock | None = None
        self.resuming = False
        self.overrides = resume.command_line_overrides()
        self.choices: dict[str, str] = {}

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    @contextmanager
    def open(cls, cfg: DictConfig, job_type: str) -> Iterator["RunSession"]:
        session = cls(cfg, job_type)
        try:
            session._open()
            yield session
        except Preempted as stop:  # saved where it was; to be requeued and resumed
            if session.record is not None:
                session.record.requeued(stop)
            stop.hand_over()  # submitit requeues the job and exits; elsewhere it returns
            raise SystemExit(0) from None
        except BaseException as err:
            user = user_error_in(err)
            if session.record is not None:
                session.record.fail(user or err)
            if user is not None and user is not err:
                raise user from err
            raise
        finally:
            if session.lock is not None:
                session.lock.release(remove=session.record is None)

    def _open(self) -> None:
        from lmvision.config.build import group_choices

        self.out.mkdir(parents=True, exist_ok=True)
        same_job = False
        if self.fitting and not self.ckpt_path:  # a requeued SLURM job continues its run
            same_job, self.ckpt_path = resume.requeued_checkpoint(self.out)
        if is_rank_zero():
            self.resuming = resume.claim_run_dir(self.out, "train" if self.fitting else "eval",
                                                 self.ckpt_path, same_job)
            self.lock = RunLock(self.out)
            self.lock.acquire(ignore_heartbeat=same_job)
        self.choices = group_choices()
        if self.resuming:  # checks first, then the record: a refusal touches nothing
            if self.ckpt_path is not None:
                self.checkpoint = checkpoints.read(self.ckpt_path, "ckpt_path")
                self._restore_config()
            return
        self._start_record(self.ckpt_path if same_job else None)
        if self.ckpt_path:
            self.checkpoint = checkpoints.read(self.ckpt_path, "ckpt_path")
            self._restore_config()
            strategy = self.cfg.strategy  # the record was started before the config was restored
            self.record.update(choices=self.choices, seed=self.cfg.get("seed"),
                               monitor=strategy.get("monitor"),
                               monitor_mode=strategy.get("monitor_mode"))
            if self.fitting:
                self.record.update(resumed_from=str(self.ckpt_path))  # a loose checkpoint

    def _restore_config(self) -> None:
        stored, trained_with = (self.checkpoint.get("lmvision_config"),
                                self.checkpoint.get("lmvision_choices") or {})
        if self.fitting:
            self.cfg = resume.resume_config(self.cfg, self.checkpoint, self.overrides,
                                            str(self.ckpt_path))
            chosen_now = {o.key_or_group for o in resume.parse(self.overrides)}
            self.choices = {**self.choices, **trained_with,
                            **{k: v for k, v in self.choices.items()
                               if k in resume.MAY_CHOOSE and k in chosen_now}}
        elif stored is not None:
            self.cfg = resume.training_config(self.cfg, stored, self.overrides)
            self.choices = {**self.choices, **resume.training_choices(trained_with,
                                                                      self.overrides)}
        elif self.job_type == "explain":
            raise UserError(f"ckpt_path={self.ckpt_path}: not an lmvision checkpoint (no stored "
                            "config)")

    def _start_record(self, resumed_from: str | None) -> None:
        strategy = self.cfg.strategy
        self.record = RunRecord(self.out, self.cfg.get("seed"), self.job_type, self.choices,
                                resumed_from=resumed_from, monitor=strategy.get("monitor"),
                                monitor_mode=strategy.get("monitor_mode"))

    # -- assembling -------------------------------------------------------------------------
    def assemble(self, callbacks: bool = True, **trainer_options: Any) -> Run:
        """Check the config, build the data, the text side and the strategy (with what a
        checkpoint carries, and ``init_from``'s weights), the callbacks (``callbacks=False``:
        none of the training ones), the loggers and the trainer."""
        from lmvision.config import build
        from lmvision.run.callbacks import RunState, StopAfterEpochs
        from lmvision.run.preemption import Requeue

        cfg = self.cfg
        datamodule, text, model = self.build()
        extras = build.instantiate_group(cfg.get("evaluation"), cfg)
        chosen = build.instantiate_group(cfg.get("callbacks"), cfg) if callbacks else []
        chosen.append(RunState(build.config_container(cfg, resolve=False), self.choices, text))
        if cfg.get("stop_after_epochs") is not None:
            chosen.append(StopAfterEpochs(cfg.stop_after_epochs))
        if self.fitting:
            chosen.append(Requeue(self.out / "checkpoints" / "last.ckpt"))
        if self.record and self.record.previous_wandb_id and "wandb" in (cfg.get("logger") or {}):
            cfg.logger.wandb.id = self.record.previous_wandb_id  # continue the same W&B run
        loggers = build.instantiate_group(cfg.get("logger"), cfg)
        trainer = build.trainer(cfg, [*chosen, *extras], loggers, **trainer_options)
        return Run(datamodule, model, trainer, text, chosen)

    def build(self, load_weights: bool = False):
        """``(datamodule, text side, strategy)`` of this run; ``load_weights``: with the
        checkpoint's weights, in eval mode (an explanation's)."""
        import pytorch_lightning as pl

        from lmvision.config.validate import check_config

        cfg = self.cfg
        check_config(cfg)
        check_run_options(cfg)
        init = checkpoints.read(cfg.init_from, "init_from") if cfg.get("init_from") else None
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, text, model = build_parts(
            cfg, self.checkpoint or init or {}, self.choices,
            before_text=self._check_resume if self.resuming else None)
        self._record_inputs(datamodule, text)
        if self.checkpoint is not None:
            strategy = cfg.strategy._target_ if self.job_type != "explain" else None
            checkpoints.check_fits(self.checkpoint, model, self.ckpt_path, "ckpt_path", strategy,
                                   self.choices)
            check_holdout(self.checkpoint, datamodule)
            if load_weights:
                model.load_state_dict(self.checkpoint["state_dict"])
                model.eval()
        if init is not None:
            self._load_init(model, init)
        return datamodule, text, model

    def _check_resume(self, datamodule) -> None:
        resume.check_fingerprint(read_json(self.out / "run.json", {}), datamodule,
                                 str(self.ckpt_path))
        self._accept_resume()

    def _accept_resume(self) -> None:
        """Every check passed: continue the run's record and keep this restart's config."""
        resumed_from = self.ckpt_path or NO_CHECKPOINT_YET
        self._start_record(str(resumed_from))
        resume.write_resume_config(self.out, self.cfg, self.overrides)

    def _record_inputs(self, datamodule, text) -> None:
        if self.record is None or not self.record.enabled:
            return
        skipped = datamodule.dataset.skipped
        if skipped:  # data.on_bad_item=skip: the unreadable items left out
            write_json(self.out / "skipped_items.json", skipped)
            self.record.update(data_skipped=len(skipped))
            print(f"data.on_bad_item=skip: left out {len(skipped)} unreadable items "
                  f"(listed in {self.out / 'skipped_items.json'})", flush=True)
        if text is not None and text.descriptions is not None:
            write_json(self.out / "descriptions.json", text.descriptions.state())
            self.record.update(descriptions=text.descriptions.provenance)

    def _load_init(self, model, init: dict) -> None:
        loaded = checkpoints.load_weights(model.net, init, self.cfg.init_from,
                                          self.cfg.get("init_from_prefix"))
        if self.record is not None:
            self.record.update(init_from=loaded)
            if self.record.enabled:
                print(checkpoints.describe_loaded(loaded), flush=True)

    # -- running ----------------------------------------------------------------------------
    @contextmanager
    def recorded(self, run: Run) -> Iterator[None]:
        """Around a fit and test: log the config to every logger, note data and device in
        run.json, and close the W&B run whatever happens."""
        from lmvision.config.build import config_container
        from lmvision.run.loggers import finish_wandb
        from lmvision.run.provenance import device_info, wandb_info

        try:
            config = config_container(self.cfg, resolve=True)
            for logger in run.trainer.loggers:
                logger.log_hyperparams(config)
            if self.record is not None and self.record.enabled:
                datamodule = run.datamodule
                self.record.update(data_fingerprint=datamodule.fingerprint,
                                   data_warnings=datamodule.split_warnings,
                                   class_split=datamodule.class_split,
                                   device=device_info(run.trainer),
                                   wandb=wandb_info(run.trainer.loggers))
            yield
        finally:
            finish_wandb(run.trainer)

    def finish(self, metrics: dict[str, Any], stopped: bool = False, print_last: bool = True,
               **fields: Any) -> dict[str, float]:
        """Record the outcome (``completed``, or ``stopped`` for a job that ended before the
        run's last epoch) and print the run directory and headline metrics."""
        flat = flat_metrics(metrics)
        if self.record is not None:
            self.record.finish(flat, status="stopped" if stopped else "completed", **fields)
        if print_last and is_rank_zero():
            print_summary(self.out, flat, self.cfg.strategy.get("monitor"))
        return flat

    @staticmethod
    def timed() -> "Stopwatch":
        return Stopwatch()


class Stopwatch:
    """``with watch: ...`` then ``watch.seconds``."""

    seconds = 0.0

    def __enter__(self) -> "Stopwatch":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._start
