"""``hydra/sweeper=optuna_search``: an Optuna search that survives interruptions.

Chosen by the ``hparams_search=<strategy>`` configs. What it does beyond a plain Optuna loop:

* the study lives in ``<sweep dir>/optuna.db`` (sqlite) under a stable ``study_name``, and the
  sweep directory has no timestamp: running the same command again continues the study. No
  trial is repeated and trial numbers go on; ``n_trials`` is the study's total, so a rerun
  runs only what is left (raise it to search further);
* a job's directory is named by its trial number (``<sweep dir>/<trial>``), so a second
  invocation never writes into the first one's jobs;
* trials left ``RUNNING`` by a killed sweep are marked failed when the study continues;
* a trial whose job fails is recorded as failed with its error (from the job's run.json)
  and the search goes on, until more than ``max_failure_rate`` of the finished trials failed;
* a study is tied to the overrides it was started with: continuing it with other fixed
  overrides is refused (they would mix two searches in one study);
* at the end it writes ``search_summary.json`` (best trial, value, parameters, failed trials
  and their errors) and prints the same.

The search space is ``params``: Hydra's sweep syntax per key, ``choice(a, b)``,
``range(start, stop[, step])``, ``interval(low, high)``, with ``tag(log, ...)`` for a log scale
and ``tag(int, interval(...))`` for whole numbers; sweep syntax on the command line adds to it.
Only light imports at module level: Hydra imports every plugin at start-up.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from lmvision import compat
from lmvision.errors import UserError

DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize",
              "minimize": "minimize"}
FIXED_KEY = "lmvision_fixed_overrides"  # the study's user attribute tying it to its command


class SearchError(UserError):
    """A search that cannot start or go on; the message names the option or the failures."""


class OptunaSearchSweeper(Sweeper):
    """Args (``hydra.sweeper.*``):
        study_name: The study's name (a rerun with the same name continues it).
        storage: An Optuna storage URL; ``null``: sqlite in the sweep directory.
        direction: ``maximize``/``minimize`` (or the strategy's ``max``/``min``).
        n_trials: Trials in the whole study.
        n_jobs: Trials launched at once (one batch of jobs for the launcher).
        seed: Seed of the TPE sampler.
        max_failure_rate: Stop when more than this share of the finished trials failed.
        params: The search space (Hydra sweep syntax per key).
    """

    def __init__(self, study_name: str, storage: str | None = None, direction: str = "maximize",
                 n_trials: int = 20, n_jobs: int = 1, seed: int | None = 0,
                 max_failure_rate: float = 0.5, params: dict[str, str] | None = None) -> None:
        self.study_name = str(study_name)
        self.storage = storage
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.seed = seed
        self.max_failure_rate = max_failure_rate
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        assert self.config is not None and self.launcher is not None
        check_options(self)
        fixed, space = split_arguments(arguments, self.params)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage or f"sqlite:///{sweep_dir / 'optuna.db'}",
            direction=DIRECTIONS[str(self.direction)], load_if_exists=True)
        # a continued study draws on from where it is: the same seed would replay the first
        # invocation's random start-up trials
        seed = None if self.seed is None else int(self.seed) + len(study.trials)
        study.sampler = optuna.samplers.TPESampler(seed=seed)
        tie_to_command(study, fixed)
        fail_stale_trials(study)
        while True:
            finished = [t for t in study.trials if t.state.is_finished()]
            left = self.n_trials - len(finished)
            if left <= 0:
                break
            batch = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            jobs = [[*fixed, *(f"{k}={format_value(v)}" for k, v in trial.params.items())]
                    for trial in batch]
            # job numbers are trial numbers: the jobs' directories never repeat
            returns = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
            for trial, ret in zip(batch, returns):
                tell(study, trial, ret, sweep_dir / str(trial.number))
            failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
            done = [t for t in study.trials if t.state.is_finished()]
            if len(failed) > self.max_failure_rate * len(done):
                write_summary(study, sweep_dir, self.study_name)
                raise SearchError(
                    f"study {self.study_name}: {len(failed)} of {len(done)} trials failed, more "
                    f"than hydra.sweeper.max_failure_rate={self.max_failure_rate}; the last "
                    f"error: {failed[-1].user_attrs.get('error', 'unknown')}")
        return write_summary(study, sweep_dir, self.study_name)


def check_options(sweeper: OptunaSearchSweeper) -> None:
    if str(sweeper.direction) not in DIRECTIONS:
        raise SearchError(f"hydra.sweeper.direction={sweeper.direction!r}: expected maximize or "
                          "minimize (or max / min)")
    for option in ("n_trials", "n_jobs"):
        value = getattr(sweeper, option)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SearchError(f"hydra.sweeper.{option}={value!r}: expected a whole number, at least 1")
    if not 0.0 <= float(sweeper.max_failure_rate) <= 1.0:
        raise SearchError(f"hydra.sweeper.max_failure_rate={sweeper.max_failure_rate!r}: expected "
                          "a share between 0 and 1")


def split_arguments(arguments: list[str], params: dict[str, str]) -> tuple[list[str], dict]:
    """The command line's fixed overrides, and the search space as Optuna distributions (the
    sweeper's ``params`` and any sweep syntax on the command line)."""
    parser = OverridesParser.create()
    fixed: list[str] = []
    space: dict[str, Any] = {}
    declared = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    given = parser.parse_overrides(arguments)
    for override, from_command in [*((o, False) for o in declared), *((o, True) for o in given)]:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        elif from_command:
            fixed.append(override.input_line)
        else:
            fixed.append(f"{override.get_key_element()}={override.get_value_element_as_str()}")
    if not space:
        raise SearchError("the search space is empty: choose one with hparams_search=<strategy> "
                          "or give hydra.sweeper.params")
    searched = set(space)
    return [f for f in fixed if f.split("=", 1)[0].lstrip("+~") not in searched], space


def distribution(override: Override):
    """An Optuna distribution for one sweep override."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    key, sweep = override.get_key_element(), override.value()
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise SearchError(f"hydra.sweeper.params.{key}: the range is empty")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(sweep.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(sweep.step))
    if isinstance(sweep, IntervalSweep):
        log = "log" in sweep.tags
        if "int" in sweep.tags:
            return IntDistribution(int(sweep.start), int(sweep.end), log=log)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    raise SearchError(f"hydra.sweeper.params.{key}: use choice(), range() or interval()")


def format_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def tie_to_command(study, fixed: list[str]) -> None:
    """A new study remembers its fixed overrides; a continued one must be given the same."""
    known = study.user_attrs.get(FIXED_KEY)
    if known is None:
        study.set_user_attr(FIXED_KEY, sorted(fixed))
    elif sorted(known) != sorted(fixed):
        raise SearchError(
            f"study {study.study_name} was started with the overrides {' '.join(sorted(known))!r}, "
            f"this command gives {' '.join(sorted(fixed))!r}; continue it with the same ones, or "
            "start another study with hydra.sweeper.study_name=<new name>")


def fail_stale_trials(study) -> None:
    """Trials still RUNNING when a study continues were cut off by a kill: mark them failed."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        compat.set_trial_user_attr(study, trial, "error",
                                   "interrupted: the sweep was stopped during this trial")
        study.tell(trial.number, state=TrialState.FAIL)


def tell(study, trial, ret, job_dir: Path) -> None:
    """Record a finished job: its value, or a failure with the error its run.json holds."""
    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    value = ret.return_value if ret.status == JobStatus.COMPLETED else None
    trial.set_user_attr("job_dir", str(job_dir))
    if isinstance(value, (int, float)) and math.isfinite(value):
        study.tell(trial, float(value))
        return
    record = read_json(job_dir / "run.json")
    error = record.get("error") or (repr(compat.job_error(ret)) if ret.status == JobStatus.FAILED
                                    else f"no value for the optimized metric (got {value!r})")
    trial.set_user_attr("error", str(error))
    study.tell(trial, state=TrialState.FAIL)


def write_summary(study, sweep_dir: Path, study_name: str) -> dict[str, Any]:
    """``search_summary.json`` and the lines printed at the end of a search."""
    from optuna.trial import TrialState

    trials = study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    summary: dict[str, Any] = {
        "study_name": study_name, "direction": study.direction.name.lower(),
        "trials": len(trials), "complete": len(complete), "failed": len(failed),
        "best": None,
        "failed_trials": [{"number": t.number, "params": t.params,
                           "error": t.user_attrs.get("error")} for t in failed],
    }
    if complete:
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "job_dir": best.user_attrs.get("job_dir")}
    (sweep_dir / "search_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"Search {study_name}: {len(trials)} trials, {len(complete)} complete, "
             f"{len(failed)} failed ({sweep_dir / 'search_summary.json'})"]
    if summary["best"]:
        best = summary["best"]
        params = " ".join(f"{k}={format_value(v)}" for k, v in best["params"].items())
        lines.append(f"  best: trial {best['number']}, value {best['value']:.4f}: {params}")
    lines += [f"  failed: trial {t['number']}: {t['error']}" for t in summary["failed_trials"]]
    print("\n".join(lines), flush=True)
    return summary


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
