"""lmvision.compat holds every use of another library's private API. Here each entry is checked
on the installed versions: the private names it relies on are there and behave as it expects,
so that a release that changes them fails here, loudly, and not in a user's run. And no private
name of another library is used anywhere else in src/ or experiments/."""

from __future__ import annotations

import ast
import csv
import importlib
import importlib.metadata
import inspect
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from lmvision import compat

ROOT = Path(__file__).resolve().parents[1]
SCANNED = (ROOT / "src" / "lmvision", ROOT / "src" / "hydra_plugins", ROOT / "experiments")
COMPAT = ROOT / "src" / "lmvision" / "compat.py"
OURS = {"lmvision", "hydra_plugins", "studies", "__future__"}  # studies: experiments/studies.py
# private uses outside compat.py that are known, each with what to do about it; an entry here
# whose use is gone fails test_the_pending_list_is_current
PENDING: dict = {}  # private uses not yet moved here (none)


def run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter: a check that could kill its process runs there."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=240, cwd=ROOT)


# ---- every entry: checked versions, and a test here -------------------------------------

def test_every_entry_names_the_versions_it_was_checked_against_and_is_tested_here():
    this = Path(__file__).read_text()
    assert compat.ENTRIES
    for entry, versions in compat.ENTRIES.items():
        assert getattr(compat, entry).CHECKED == versions and versions, entry
        for dist, version in versions.items():
            assert re.fullmatch(r"\d+(\.\d+)+", version), (entry, dist, version)
            importlib.metadata.version(dist)  # a real distribution name
        assert f"compat.{entry}(" in this, f"lmvision.compat.{entry} has no test here"


def test_an_error_names_the_library_its_version_and_what_is_missing():
    err = compat.broken("captum_ridge", "captum._utils.models", "no SkLearnRidge")
    import captum

    assert isinstance(err, RuntimeError)
    assert f"captum._utils.models {captum.__version__}: no SkLearnRidge" in str(err)
    assert "checked against captum 0.9.0" in str(err)


def test_importing_compat_imports_no_library():
    result = run_python("""
        import sys
        import lmvision.compat
        heavy = [m for m in ("torch", "pytorch_lightning", "lightning_fabric", "optuna", "hydra",
                             "captum", "transformers", "datasets") if m in sys.modules]
        print("HEAVY", heavy)
    """)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


# ---- Lightning's watcher of DDP processes -------------------------------------------------

def test_lightnings_observer_has_what_compat_uses():
    from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    observer = _ChildProcessObserver(main_pid=0, child_processes=[])
    assert callable(_ChildProcessObserver._terminate_all)
    assert observer._child_processes == [] and observer._finished is False
    assert observer._termination_signal in (signal.SIGKILL, signal.SIGTERM)


OBSERVE = """
    import os, subprocess, sys, threading, time
    from lmvision import compat
    from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    {before}
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    sleeping = subprocess.Popen(["sleep", "60"])
    failing.wait()
    observer = _ChildProcessObserver(main_pid=os.getpid(), child_processes=[failing, sleeping])
    finished = observer._run()
    print("SURVIVED", finished, sleeping.wait(timeout=10), flush=True)
"""


def test_unpatched_lightning_kills_this_process_when_a_child_fails():
    """Why compat.spare_main_process_when_a_child_fails exists: Lightning's observer kills its
    main process too (here a child interpreter, killed by SIGKILL before it prints)."""
    result = run_python(OBSERVE.format(before=""))
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    assert "SURVIVED" not in result.stdout


def test_spared_main_process_survives_a_failing_child_and_its_siblings_are_ended():
    result = run_python(OBSERVE.format(before="compat.spare_main_process_when_a_child_fails()\n"
                                              "    compat.spare_main_process_when_a_child_fails()"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SURVIVED True {-signal.SIGKILL}" in result.stdout


@pytest.mark.slow
def test_finishing_the_observers_waits_for_or_kills_the_children_and_stops_the_threads():
    result = run_python("""
        import subprocess, sys, threading
        from lmvision import compat
        compat.finish_child_process_observers()  # Lightning's launcher never imported: no-op
        assert compat.OBSERVER_MODULE not in sys.modules
        from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
        compat.spare_main_process_when_a_child_fails()  # as in a sweep's job
        quick = subprocess.Popen([sys.executable, "-c", "pass"])
        slow = subprocess.Popen(["sleep", "60"])
        observer = _ChildProcessObserver(main_pid=0, child_processes=[quick, slow],
                                         sleep_period=0.05)
        observer.start()
        compat.finish_child_process_observers(timeout=2)
        observer.join(timeout=10)
        print("DONE", quick.returncode, slow.returncode, observer._finished,
              observer.is_alive(), flush=True)
    """)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"DONE 0 {-signal.SIGKILL} True False" in result.stdout


def test_a_missing_terminate_all_is_an_error_not_a_silent_no_op(monkeypatch):
    from lightning_fabric import __version__
    from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    monkeypatch.delattr(_ChildProcessObserver, "_terminate_all")
    with pytest.raises(compat.PrivateAPIError, match=rf"lightning_fabric\S* {__version__}: "
                                                      r"no method .*_terminate_all"):
        compat.spare_main_process_when_a_child_fails()


# ---- Lightning's CSV writer ---------------------------------------------------------------

def write_metrics(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.csv").write_text("epoch,step,train/loss\n0,9,1.5\n")
    return folder / "metrics.csv"


def test_lightnings_csv_writer_deletes_an_existing_metrics_file(tmp_path):
    """What compat.continued_csv_experiment overrides, and where Lightning keeps the writer."""
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    assert callable(ExperimentWriter._check_log_dir_exists)
    metrics = write_metrics(tmp_path / "csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ExperimentWriter(log_dir=str(tmp_path / "csv"))
    assert not metrics.exists()
    logger = CSVLogger(str(tmp_path), name="other", version="")
    assert logger._experiment is None
    assert logger.experiment is logger._experiment


def test_lmvisions_csv_logger_continues_an_existing_metrics_file(tmp_path):
    from lmvision.run.loggers import CSVLogger

    metrics = write_metrics(tmp_path / "csv")
    logger = CSVLogger(str(tmp_path), name="csv", version="")
    assert compat.continued_csv_experiment(logger) is logger.experiment
    assert type(logger.experiment) is compat.ContinuedCSVWriter
    logger.log_metrics({"train/loss": 1.25}, step=19)
    logger.log_metrics({"val/acc": 0.5}, step=19)  # a new column: the file is rewritten
    logger.save()
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["train/loss"], r["val/acc"]) for r in rows] == \
        [("9", "1.5", ""), ("19", "1.25", ""), ("19", "", "0.5")]
    # a writer travels to another process as Lightning's does
    assert type(pickle.loads(pickle.dumps(logger.experiment))) is compat.ContinuedCSVWriter


def test_a_lightning_writer_that_no_longer_checks_its_folder_is_an_error(monkeypatch, tmp_path):
    from lightning_fabric.loggers.csv_logs import _ExperimentWriter

    from lmvision.run.loggers import CSVLogger

    monkeypatch.delattr(_ExperimentWriter, "_check_log_dir_exists")
    compat._continued_csv_writer.cache_clear()
    try:
        with pytest.raises(compat.PrivateAPIError, match="no longer calls _check_log_dir_exists"):
            compat.continued_csv_experiment(CSVLogger(str(tmp_path), name="csv", version=""))
    finally:
        compat._continued_csv_writer.cache_clear()


# ---- Optuna's storage ---------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_a_running_trial_gets_a_user_attribute_through_the_storage(tmp_path, storage):
    import optuna

    url = None if storage == "memory" else f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    study.ask()
    (running,) = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    compat.set_trial_user_attr(study, running, "error", "interrupted")
    study.tell(running.number, state=optuna.trial.TrialState.FAIL)
    if url:
        study = optuna.load_study(study_name="s", storage=url)
    (trial,) = study.trials
    assert trial.user_attrs == {"error": "interrupted"}
    with pytest.raises(compat.PrivateAPIError, match=rf"optuna {optuna.__version__}: "):
        compat.set_trial_user_attr(object(), running, "error", "x")


# ---- Hydra's JobReturn --------------------------------------------------------------------

def test_a_failed_jobs_error_is_read_without_raising_it(capsys):
    from hydra.core.utils import JobReturn, JobStatus

    ret, boom = JobReturn(), ValueError("boom")
    ret.return_value, ret.status = boom, JobStatus.FAILED
    assert compat.job_error(ret) is boom
    with pytest.raises(ValueError, match="boom"):  # the public property raises it: why compat
        ret.return_value
    assert "Error executing job" in capsys.readouterr().err


# ---- captum's interpretable model ---------------------------------------------------------

def test_captums_sklearn_ridge_fits_and_serves_lime():
    import torch
    from captum._utils.models.model import Model
    from captum.attr import Lime
    from torch.utils.data import DataLoader, TensorDataset

    ridge = compat.captum_ridge(alpha=1e-6)
    assert isinstance(ridge, Model)
    x = torch.rand(64, 3)
    y = x @ torch.tensor([2.0, -1.0, 0.5]) + 0.25
    ridge.fit(DataLoader(TensorDataset(x, y, torch.ones(64)), batch_size=64))
    assert torch.allclose(ridge.representation().flatten(), torch.tensor([2.0, -1.0, 0.5]),
                          atol=1e-3)
    weights = torch.tensor([[1.0, 0.0, -3.0, 0.5]])  # a linear "classifier" with one class
    lime = Lime(lambda inputs: inputs @ weights.T, interpretable_model=compat.captum_ridge())
    torch.manual_seed(0)
    attr = lime.attribute(torch.ones(1, 4), target=0, n_samples=200)
    assert attr.shape == (1, 4) and int(attr.argmax()) == 0 and int(attr.argmin()) == 2


# ---- transformers' attention implementation -----------------------------------------------

@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_attention_implementation_of_a_transformers_model(attention):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                        attn_implementation=attention)
    assert compat.attention_implementation(GPT2LMHeadModel(config)) == attention


def test_a_config_without_the_attention_implementation_is_an_error():
    class Model:
        config = object()

    with pytest.raises(compat.PrivateAPIError, match="has no _attn_implementation"):
        compat.attention_implementation(Model())


# ---- datasets' fingerprint ----------------------------------------------------------------

def test_a_saved_datasets_fingerprint_is_the_same_at_each_load_and_follows_its_data(tmp_path):
    datasets = pytest.importorskip("datasets")

    for name, values in (("a", [1, 2, 3]), ("b", [1, 2, 4])):
        datasets.Dataset.from_dict({"x": values}).save_to_disk(str(tmp_path / name))
    a, again, b = (datasets.load_from_disk(str(tmp_path / n)) for n in ("a", "a", "b"))
    assert isinstance(compat.dataset_fingerprint(a), str)
    assert compat.dataset_fingerprint(a) == compat.dataset_fingerprint(again)
    assert compat.dataset_fingerprint(a) != compat.dataset_fingerprint(b)
    assert compat.dataset_fingerprint(a.map(lambda r: {"x": r["x"] + 1})) != \
        compat.dataset_fingerprint(a)
    with pytest.raises(compat.PrivateAPIError, match="has no _fingerprint"):
        compat.dataset_fingerprint([1, 2, 3])


# ---- no private name of another library outside compat.py ---------------------------------

def private(name: str) -> bool:
    """``_x``, not ``__x__`` (Python's) nor ``_x_`` (Hydra's config keys, ``_target_``...)."""
    return name.startswith("_") and not name.endswith("_")


def python_files(roots=SCANNED) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if p != COMPAT)


def own_private_names(files: list[Path]) -> set[str]:
    """Private names that lmvision itself defines: its functions, classes, variables and
    attributes (``self._x = ...``); a ``thing._x`` naming one of them is lmvision's own."""
    names = {p.stem for p in files}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if private(n)}


def is_self(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id in ("self", "cls")) or \
        (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super")


def private_uses(path: Path, own: set[str]) -> list[tuple[int, str, str]]:
    """``(line, name, what)`` for each private name of another library that ``path`` uses:
    imported, read from a library module, or read from an object (``obj._x``,
    ``getattr(obj, "_x")``) when lmvision defines no such name. ``self._x`` is left to
    :func:`inherited_private_uses`."""
    tree = ast.parse(path.read_text())
    modules = set()  # names bound to a library's modules in this file
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in OURS:
                    modules.add((alias.asname or alias.name).split(".")[0])
                    if any(private(part) for part in alias.name.split(".")):
                        found.append((node.lineno, alias.name, "import"))
        elif isinstance(node, ast.ImportFrom) and not node.level and \
                (node.module or "").split(".")[0] not in OURS:
            parts = (node.module or "").split(".")
            for alias in node.names:
                if any(private(p) for p in parts) or private(alias.name):
                    found.append((node.lineno, f"{node.module}.{alias.name}", "import"))
    for node in ast.walk(tree):
        target, name = None, None
        if isinstance(node, ast.Attribute) and private(node.attr):
            target, name = node.value, node.attr
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "setattr", "hasattr", "delattr") and \
                len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and \
                isinstance(node.args[1].value, str) and private(node.args[1].value):
            target, name = node.args[0], node.args[1].value
        if target is None or is_self(target):
            continue
        if isinstance(target, ast.Name) and target.id in modules:
            found.append((node.lineno, f"{target.id}.{name}", "a library module's private name"))
        elif name not in own:
            found.append((node.lineno, name, "another library's private attribute"))
    return found


def self_private_names(cls: ast.ClassDef) -> set[str]:
    """Private names a class defines or reaches through ``self``/``cls``/``super()``."""
    names = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and is_self(node.value):
            names.add(node.attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2 and \
                is_self(node.args[0]) and isinstance(node.args[1], ast.Constant):
            names.add(str(node.args[1].value))
    return {n for n in names if private(n) and not n.startswith("__")}


def library_names(base: type) -> set[str]:
    """Names a library class defines or sets on its instances (``self._x = ...``)."""
    names = set(vars(base))
    try:
        names |= set(re.findall(r"self\.(_\w+)", inspect.getsource(base)))
    except (OSError, TypeError):
        pass
    return names


def inherited_private_uses(path: Path, module=None) -> list[tuple[int, str, str]]:
    """A class of lmvision's that subclasses a library's class must not define or touch that
    class's private names through ``self`` (Lightning's ``_experiment``, its
    ``_check_log_dir_exists``...)."""
    tree = ast.parse(path.read_text())
    classes = [(c, self_private_names(c)) for c in tree.body if isinstance(c, ast.ClassDef)]
    classes = [(c, names) for c, names in classes if c.bases and names]
    if not classes:
        return []
    if module is None:
        parts = path.relative_to(ROOT / "src").with_suffix("").parts
        module = importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    found = []
    for node, names in classes:
        for base in getattr(module, node.name).__mro__[1:]:
            if base.__module__.split(".")[0] in OURS | {"builtins", "abc", "typing"}:
                continue
            for name in sorted(names & library_names(base)):
                found.append((node.lineno, name, f"{base.__module__}.{base.__qualname__}'s"))
            names = names - library_names(base)  # each name once, with the nearest base
    return found


def scan(files: list[Path], inherited: bool = True) -> list[str]:
    own = own_private_names(python_files())
    found = []
    for path in files:
        uses = private_uses(path, own)
        if inherited and path.is_relative_to(ROOT / "src"):
            uses += inherited_private_uses(path)
        found += [(path, *use) for use in sorted(uses)]
    return [f"{p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}:{line}: {name} ({what})"
            for p, line, name, what in found]


def test_no_private_name_of_another_library_outside_compat():
    found = [line for line in scan(python_files())
             if (line.split(":")[0], line.split(": ")[1].split(" ")[0]) not in PENDING]
    assert not found, ("another library's private API outside src/lmvision/compat.py (move "
                       "it there, with a test here):\n" + "\n".join(found))


def test_the_pending_list_is_current():
    found = {(line.split(":")[0], line.split(": ")[1].split(" ")[0])
             for line in scan([ROOT / path for path, _ in PENDING], inherited=False)}
    assert set(PENDING) <= found, f"no longer used, remove from PENDING: {set(PENDING) - found}"


def test_the_scan_sees_each_kind_of_private_use(tmp_path):
    """The check itself can fail."""
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        import torch
        from captum._utils.models import Model
        from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

        def f(study, trial, model, run_dir):
            torch._dynamo.reset()
            study._storage.set_trial_user_attr(trial._trial_id, "k", 1)
            model.config._commit_hash, getattr(model, "_attn_implementation")
            run_dir._run_failures  # lmvision's own name (run/cli.py): allowed
            return model.cfg._target_  # a Hydra key, not a private name
    """))
    names = [line.split(": ")[1].split(" ")[0] for line in scan([bad])]
    observer = "lightning_fabric.strategies.launchers.subprocess_script._ChildProcessObserver"
    assert names == ["captum._utils.models.Model", observer, "torch._dynamo", "_storage",
                     "_trial_id", "_attn_implementation", "_commit_hash"], names


def test_the_scan_sees_a_subclass_reaching_into_its_library_base(tmp_path, monkeypatch):
    """lmvision's CSV logger before compat.py: Lightning's ``_experiment`` and its writer's
    ``_check_log_dir_exists``, through ``self``; a private name of lmvision's own is allowed."""
    bad = tmp_path / "planted_logger.py"
    bad.write_text(textwrap.dedent("""
        from pytorch_lightning import loggers
        from pytorch_lightning.loggers.csv_logs import ExperimentWriter

        class Logger(loggers.CSVLogger):
            @property
            def experiment(self):
                self._rows = []  # lmvision's own
                if self._experiment is None:
                    self._experiment = Writer(log_dir=self.log_dir)
                return self._experiment

        class Writer(ExperimentWriter):
            def _check_log_dir_exists(self):
                pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    found = inherited_private_uses(bad, importlib.import_module("planted_logger"))
    assert [(line, name) for line, name, _ in found] == \
        [(5, "_experiment"), (13, "_check_log_dir_exists")], found
