"""Every use of another library's private API, in this one module.

Each function below reaches into one library's private names (a leading underscore: no promise
between releases). Its docstring says what it relies on and why no public way does the same;
its ``CHECKED`` (also in :data:`ENTRIES`) names the versions it was checked against. On the
installed versions, tests/test_compat.py checks that each private name is still there and
behaves as relied on, so that a new release breaks that test rather than a user's run. At run
time a function whose private name is gone raises :class:`PrivateAPIError`, naming the library,
its installed version and what is missing; none silently does nothing in its place. (The one
no-op, in :func:`finish_child_process_observers`, is when Lightning's launcher was never
imported: then no observer exists to finish.)

Only the standard library is imported here: each library is imported by the function that
wraps it, so that importing this module stays cheap.
"""

from __future__ import annotations

import csv
import functools
import importlib
import os
import subprocess
import sys
import threading
from typing import Any, Callable

ENTRIES: dict[str, dict[str, str]] = {}  # entry -> {distribution: version it was checked against}
OBSERVER_MODULE = "lightning_fabric.strategies.launchers.subprocess_script"


class PrivateAPIError(RuntimeError):
    """A library's private name that lmvision relies on is gone or has changed."""


def checked(versions: dict[str, str]) -> Callable:
    """Record the versions an entry was checked against, as ``entry.CHECKED`` and in ENTRIES."""
    def mark(fn: Callable) -> Callable:
        fn.CHECKED = dict(versions)  # type: ignore[attr-defined]
        ENTRIES[fn.__name__] = fn.CHECKED  # type: ignore[attr-defined]
        return fn
    return mark


def installed_version(module: str) -> str:
    """The installed version of the library that ``module`` belongs to, or ``not installed``."""
    from importlib import metadata

    top = module.split(".")[0]
    version = getattr(sys.modules.get(top), "__version__", None)
    if version is None:
        dists = metadata.packages_distributions().get(top, [])
        version = metadata.version(dists[0]) if dists else "not installed"
    return str(version)


def broken(entry: str, module: str, missing: str) -> PrivateAPIError:
    """The error of ``entry`` when ``module`` no longer has what it relies on."""
    seen = ", ".join(f"{dist} {version}" for dist, version in ENTRIES[entry].items())
    return PrivateAPIError(
        f"{module} {installed_version(module)}: {missing}. lmvision.compat.{entry} relies on "
        f"it and was checked against {seen}: install that version, or update "
        "src/lmvision/compat.py for this one (tests/test_compat.py shows what changed)")


def _import(entry: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise broken(entry, module, f"cannot import it ({err})") from err


def _names_used(function: Any) -> set[str]:
    """The attribute and global names that a plain function's code reads or writes."""
    code = getattr(function, "__code__", None)
    return set(code.co_names) if code is not None else set()


def _observer_class(entry: str, module: Any) -> type:
    observer = getattr(module, "_ChildProcessObserver", None)
    if not isinstance(observer, type):
        raise broken(entry, OBSERVER_MODULE, "no class _ChildProcessObserver")
    return observer


@checked({"pytorch-lightning": "2.6.6"})
def spare_main_process_when_a_child_fails() -> None:
    """Make Lightning's watcher of the DDP processes it started end only those processes when
    one of them fails, not this process too (a sweep's failing job must not end the sweep).

    Relies on ``lightning_fabric.strategies.launchers.subprocess_script._ChildProcessObserver``:
    its ``_run`` calls ``self._terminate_all()`` when a child exits non-zero, which sends
    ``self._termination_signal`` (SIGKILL) to each of ``self._child_processes`` and then to this
    process. ``_terminate_all`` is replaced, on the class, by one without that last kill. No
    public way: the launcher starts the observer itself, with no option or hook for what it
    does when a child fails. Calling it again changes nothing.
    """
    observer = _observer_class("spare_main_process_when_a_child_fails",
                               _import("spare_main_process_when_a_child_fails", OBSERVER_MODULE))
    missing = [f"_ChildProcessObserver.{name} does not use {attr}" for name, attr in (
        ("_run", "_terminate_all"), ("__init__", "_child_processes"),
        ("__init__", "_termination_signal")) if attr not in _names_used(vars(observer).get(name))]
    if not callable(getattr(observer, "_terminate_all", None)):
        missing.insert(0, "no method _ChildProcessObserver._terminate_all")
    if missing:
        raise broken("spare_main_process_when_a_child_fails", OBSERVER_MODULE, "; ".join(missing))
    observer._terminate_all = _terminate_children


def _terminate_children(observer: Any) -> None:
    """``_ChildProcessObserver._terminate_all`` without the kill of this process."""
    for child in observer._child_processes:
        child.send_signal(observer._termination_signal)


@checked({"pytorch-lightning": "2.6.6"})
def finish_child_process_observers(timeout: float = 60.0) -> None:
    """Wait for the DDP processes that Lightning started from this process (killing any still
    running after ``timeout`` seconds) and stop the threads that watch them, so that the next
    job of a sweep starts with none.

    Relies on ``_ChildProcessObserver`` (see :func:`spare_main_process_when_a_child_fails`)
    being a thread that holds its processes in ``_child_processes`` and stops once
    ``_finished`` is true. No public way: nothing public refers to the observer, a daemon
    thread that the launcher starts and forgets. A no-op when Lightning's launcher module was
    never imported: no observer can have been started then.
    """
    module = sys.modules.get(OBSERVER_MODULE)
    if module is None:
        return
    observer = _observer_class("finish_child_process_observers", module)
    for thread in threading.enumerate():
        if not isinstance(thread, observer):
            continue
        if not isinstance(getattr(thread, "_child_processes", None), list) or \
                not hasattr(thread, "_finished"):
            raise broken("finish_child_process_observers", OBSERVER_MODULE,
                         "a _ChildProcessObserver without _child_processes or _finished")
        for child in thread._child_processes:
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
        thread._finished = True


@checked({"pytorch-lightning": "2.6.6"})
def continued_csv_experiment(logger: Any) -> Any:
    """The writer of a Lightning ``CSVLogger`` that continues an existing ``metrics.csv``
    instead of deleting it: a :class:`ContinuedCSVWriter`, made on first use and kept in the
    logger as Lightning's own ``experiment`` property keeps its writer (``logger.experiment``
    is then this writer).

    Relies on the logger keeping its writer in ``_experiment`` (``None`` until made) and on
    ``ExperimentWriter.__init__`` calling ``self._check_log_dir_exists()``, which deletes an
    existing ``metrics.csv``; ``ContinuedCSVWriter`` overrides it to read the file's columns
    instead, so that ``save`` appends to it. No public way: neither class takes an option to
    keep the file, and the writer is made nowhere but in ``experiment``.
    """
    writer = _continued_csv_writer()
    if not hasattr(logger, "_experiment"):
        raise broken("continued_csv_experiment", "pytorch_lightning",
                     f"{type(logger).__name__} keeps no _experiment")
    if logger._experiment is None:
        os.makedirs(logger.root_dir, exist_ok=True)
        logger._experiment = writer(log_dir=logger.log_dir)
    return logger._experiment


@functools.cache
def _continued_csv_writer() -> type:
    module = "pytorch_lightning.loggers.csv_logs"
    base = getattr(_import("continued_csv_experiment", module), "ExperimentWriter", None)
    inits = [vars(c)["__init__"] for c in getattr(base, "__mro__", ()) if "__init__" in vars(c)]
    if not callable(getattr(base, "_check_log_dir_exists", None)) or \
            not any("_check_log_dir_exists" in _names_used(init) for init in inits):
        raise broken("continued_csv_experiment", module,
                     "ExperimentWriter.__init__ no longer calls _check_log_dir_exists")

    def _check_log_dir_exists(self: Any) -> None:  # Lightning's deletes metrics.csv
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])

    return type("ContinuedCSVWriter", (base,), {
        "__module__": __name__, "_check_log_dir_exists": _check_log_dir_exists,
        "__doc__": "Lightning's CSV ExperimentWriter, continuing an existing metrics.csv."})


def __getattr__(name: str) -> Any:
    if name == "ContinuedCSVWriter":  # made on first use (it subclasses a Lightning class)
        return _continued_csv_writer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@checked({"optuna": "5.1.0"})
def set_trial_user_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """Set a user attribute of an unfinished trial given as a ``FrozenTrial`` (as
    ``study.get_trials`` gives them), such as one that a killed sweep left ``RUNNING``.

    Relies on ``study._storage`` (the study's storage), ``trial._trial_id`` (the trial's id
    there) and the storage's ``set_trial_user_attr(trial_id, key, value)``. No public way: a
    ``FrozenTrial`` writes nothing back to the storage, and a live ``Trial`` (which has
    ``set_user_attr``) comes only from ``study.ask()``, for a new trial.
    """
    storage, trial_id = getattr(study, "_storage", None), getattr(trial, "_trial_id", None)
    if not callable(getattr(storage, "set_trial_user_attr", None)) or not isinstance(trial_id, int):
        raise broken("set_trial_user_attr", "optuna",
                     "no Study._storage.set_trial_user_attr or no FrozenTrial._trial_id")
    storage.set_trial_user_attr(trial_id, key, value)


@checked({"hydra-core": "1.3.8"})
def job_error(ret: Any) -> Any:
    """What a failed Hydra job raised, read from its ``JobReturn`` without raising it.

    Relies on ``JobReturn`` keeping a job's return value, or a failed job's exception, in its
    field ``_return_value``. No public way: the ``return_value`` property raises that exception
    for a job that did not complete (and first prints a line on stderr).
    """
    if "_return_value" not in getattr(type(ret), "__dataclass_fields__", {}):
        raise broken("job_error", "hydra", "JobReturn has no field _return_value")
    return ret._return_value


@checked({"captum": "0.9.0", "scikit-learn": "1.9.1"})
def captum_ridge(alpha: float = 1.0) -> Any:
    """An interpretable model for captum's ``Lime``: scikit-learn's ridge regression.

    Relies on ``captum._utils.models.linear_model.SkLearnRidge`` (``Lime``'s own default,
    ``SkLearnLasso``, comes from the same module). No public way: captum exports its
    interpretable models, and the ``Model`` interface a new one would implement, only from
    ``captum._utils``.
    """
    module = "captum._utils.models.linear_model"
    ridge = getattr(_import("captum_ridge", module), "SkLearnRidge", None)
    if ridge is None:
        raise broken("captum_ridge", module, "no SkLearnRidge")
    return ridge(alpha=alpha)


@checked({"transformers": "5.25.0"})
def attention_implementation(model: Any) -> str | None:
    """The attention a transformers model runs with (``eager``, ``sdpa``...): the one asked for
    by ``attn_implementation``, or what transformers chose instead.

    Relies on ``model.config._attn_implementation``. No public way: the config takes the
    ``attn_implementation`` argument but has no public attribute or getter for it.
    """
    config = getattr(model, "config", None)
    if not hasattr(type(config), "_attn_implementation") and \
            not hasattr(config, "_attn_implementation"):
        raise broken("attention_implementation", type(config).__module__,
                     f"{type(config).__name__} has no _attn_implementation")
    return config._attn_implementation


@checked({"datasets": "5.2.0"})
def dataset_fingerprint(dataset: Any) -> str:
    """The fingerprint that ``datasets`` keeps for a ``Dataset``: a hash of its data and of the
    transforms that made it, the same each time a saved dataset is loaded.

    Relies on ``datasets.Dataset._fingerprint``. No public way: datasets names its cache files
    by it but has no public attribute or getter for it.
    """
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not isinstance(fingerprint, str) or not fingerprint:
        raise broken("dataset_fingerprint", type(dataset).__module__,
                     f"{type(dataset).__name__} has no _fingerprint")
    return fingerprint
