"""Do the tests that claim to catch a defect catch it? Each mutation puts a defect back into a
copy of lmvision's code; the test named beside it must then fail, and pass on the code as it is.

    .venv/bin/python tests/mutations.py            # every mutation (several minutes)
    .venv/bin/python tests/mutations.py resume ig  # some of them

The copy (``src/`` and ``conf/``) goes first on ``PYTHONPATH``, so the test and the processes it
starts run the mutated code. ``--before DIR`` runs the resume tests against another checkout
(the code before the run session), where the defects they describe were real.
Exit status 0 when every mutation is caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (file under src/lmvision, the code, the defect put in its place, the test that must fail)
MUTATIONS = {
    "resume": (
        "train.py", "ckpt_path=session.ckpt_path)", "ckpt_path=None)",
        "tests/test_resume.py::test_a_resume_trains_only_the_epochs_left"),
    "ddp": (
        "data/samplers.py",
        "        return iter(range(self.rank, len(self.dataset), self.num_replicas))",
        "        return super().__iter__()  # padded to equal shares",
        "tests/test_readme.py::test_readme_command_runs[.venv/bin/lmvision-train trainer=ddp_cpu]"),
    "gen_acc": (
        "evaluation/generation.py",
        "(judge({\"image\": normalise(drawn)}).argmax(1) == labels)",
        "(judge({\"image\": normalise(drawn)}).argmax(1) == labels.roll(1))",
        "tests/test_evaluation.py::test_gen_acc_is_one_for_a_judge_that_agrees_and_zero_for_one"
        "_that_does_not"),
    "ig": (
        "evaluation/faithfulness.py", "target=targets, n_steps=16",
        "target=torch.zeros_like(targets), n_steps=16",
        "tests/test_evaluation.py::test_integrated_gradients_points_at_what_decides_the_class_it"
        "_explains"),
    "probe_threads": (
        "evaluation/probes.py", "    _fit_modules()  # their BLAS", "    pass  # their BLAS",
        "tests/test_pixel_lm.py::test_probe_fits_run_on_one_thread_each_side_by_side"),
    "sweep_dir": (
        "run/hydra_callbacks.py", "        HydraConfig.instance().set_config(config)\n",
        "        if not HydraConfig.initialized():\n"
        "            HydraConfig.instance().set_config(config)\n",
        "tests/test_multiprocess.py::test_a_sweep_after_another_config_in_the_same_process_names_"
        "its_own_directory"),
}
# the resume defects of the issue, each tested against the code before the run session
BEFORE = [
    "tests/test_resume.py::test_the_checkpoint_alone_resumes_any_experiment",
    "tests/test_resume.py::test_a_resume_that_would_change_what_is_learned_is_refused_and_"
    "touches_nothing",
    "tests/test_resume.py::test_a_resume_whose_data_changed_on_disk_is_refused",
    "tests/test_resume.py::test_a_run_that_is_still_running_is_not_resumed",
]


def pytest(test: str, src: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           test], cwd=ROOT, env=env, capture_output=True, text=True)


def mutated_copy(where: Path, file: str, code: str, defect: str) -> Path:
    shutil.copytree(ROOT / "src", where / "src")
    shutil.copytree(ROOT / "conf", where / "conf")
    path = where / "src" / "lmvision" / file
    text = path.read_text()
    if text.count(code) != 1:
        raise SystemExit(f"{file}: the code to mutate is not there once: {code!r}")
    path.write_text(text.replace(code, defect))
    return where / "src"


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else result.stderr.strip().splitlines()[-1]


def failure(result: subprocess.CompletedProcess) -> str:
    """The first assertion or error line of a failed test (``E   ...``): why it failed."""
    return next((line.strip() for line in result.stdout.splitlines() if line.startswith("E ")),
                "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(MUTATIONS)}")
    parser.add_argument("--before", type=Path, help="a checkout of the code before the session")
    args = parser.parse_args()
    caught = True
    for name in args.names or list(MUTATIONS):
        file, code, defect, test = MUTATIONS[name]
        clean = pytest(test, None)
        with tempfile.TemporaryDirectory() as tmp:
            broken = pytest(test, mutated_copy(Path(tmp), file, code, defect))
        ok = clean.returncode == 0 and broken.returncode != 0
        caught &= ok
        print(f"{'CAUGHT' if ok else 'MISSED'} {name}: {file}: {code.strip()!r} -> "
              f"{defect.strip()!r}\n    as it is: {last_line(clean)}\n    mutated:  "
              f"{last_line(broken)}", flush=True)
    if args.before:
        os.environ["LMVISION_TESTS_IN_SUBPROCESS"] = "1"  # the old code has no lmvision.run
        for test in BEFORE:
            before = pytest(test, args.before / "src")
            ok = before.returncode != 0
            caught &= ok
            print(f"{'FAILED BEFORE' if ok else 'PASSED BEFORE (not caught)'} {test}\n    "
                  f"{last_line(before)}\n    {failure(before)}", flush=True)
    return 0 if caught else 1


if __name__ == "__main__":
    raise SystemExit(main())
