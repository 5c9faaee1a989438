"""lmvision.run.inline: a command run in this process behaves as in a new one (its exit status,
output and a message of SystemExit), and leaves argv, directory and environment as they were."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lmvision.run.inline import run_main, run_script

SCRIPT = """
import os, sys
print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("LMV_INLINE_TEST"))
os.environ["LMV_LEFT_BEHIND"] = "1"
os.chdir("/")
if sys.argv[1] == "message":
    raise SystemExit("the script refuses")
if sys.argv[1] == "error":
    raise ValueError("a bug")
raise SystemExit(int(sys.argv[1]))
"""


def test_a_script_runs_as_a_command_and_leaves_nothing_changed(tmp_path, monkeypatch):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    monkeypatch.delenv("LMV_LEFT_BEHIND", raising=False)
    before = sys.argv, Path.cwd(), dict(os.environ)
    status, out, err = run_script(script, ["3"], tmp_path, {"LMV_INLINE_TEST": "set"})
    assert status == 3 and err == ""
    assert out.strip() == f"argv ['3'] cwd {tmp_path} env set"
    assert run_script(script, ["message"], tmp_path)[::2] == (1, "the script refuses\n")
    status, _, err = run_script(script, ["error"], tmp_path)
    assert status == 1 and "Traceback" in err and "ValueError: a bug" in err
    assert (sys.argv, Path.cwd(), dict(os.environ)) == before


def test_an_entry_point_runs_here_with_its_own_exit_status(tmp_path):
    status, out, err = run_main("lmvision.train", ["text_encoder=nope"], tmp_path)
    assert status == 2 and out == ""
    assert err.startswith("lmvision: error: text_encoder=nope: no such option")
