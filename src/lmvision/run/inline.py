"""Run an entry point's ``main()`` in this process, as its console script would in a new one.

For callers that run many short commands or scripts (the tests, a study's ``--smoke`` check): the
interpreter's start and the imports of torch, Lightning and transformers are paid once, not
once per command. The command gets its own ``sys.argv``, working directory and environment
variables, its output is captured, and its exit status is kept (an uncaught error prints its
traceback and gives 1, as it would end a process). Single-process commands only: a DDP run or
a sweep launcher that starts processes re-runs ``sys.argv`` in them, so those need
``python -m`` in a process of their own.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import Callable


def run_main(module: str, argv: list[str], cwd: Path | str,
             env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    """``python -m <module> <argv...>`` in ``cwd`` with ``env`` added (``None`` removes a
    variable), run here; returns (exit status, stdout, stderr). Everything it changed (argv,
    directory, environment, Hydra's global state) is restored afterwards."""
    entry = importlib.import_module(module)
    return _as_a_command([module, *argv], cwd, env, entry.main)


def run_script(path: Path | str, argv: list[str], cwd: Path | str,
               env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    """``python <path> <argv...>`` (a script run as ``__main__``), here, as :func:`run_main`."""
    return _as_a_command([str(path), *argv], cwd, env,
                         lambda: runpy.run_path(str(path), run_name="__main__"))


def _as_a_command(argv: list[str], cwd: Path | str, env: dict[str, str | None] | None,
                  call: Callable[[], object]) -> tuple[int, str, str]:
    from hydra.core.global_hydra import GlobalHydra

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, Path.cwd(), dict(os.environ)
    sys.argv = argv
    os.chdir(cwd)
    for key, value in (env or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    status = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            GlobalHydra.instance().clear()
            try:
                call()
            except SystemExit as stop:  # as the interpreter ends: a message goes to stderr, 1
                status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
                if stop.code is not None and not isinstance(stop.code, int):
                    print(stop.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 - as an uncaught error ends a process
                traceback.print_exc()
                status = 1
    finally:
        GlobalHydra.instance().clear()
        sys.argv = saved[0]
        os.chdir(saved[1])
        os.environ.clear()
        os.environ.update(saved[2])
    return status, out.getvalue(), err.getvalue()
