"""The study scripts under experiments/ run (timings are not asserted: the READMEs hold them)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT, run_cli, run_script_inline


@pytest.mark.slow
def test_overhead_study_quick_run_has_identical_losses(tmp_path):
    summary = tmp_path / "overhead.json"
    result = run_cli([str(ROOT / "experiments" / "overhead" / "run.py"), "--quick",
                      "--json", str(summary)], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads(summary.read_text())
    assert data["loss_pass"] is True and data["max_loss_diff"] <= 1e-5


@pytest.mark.slow
def test_pixel_lm_speed_study_quick_run(tmp_path):
    """The speed study runs end to end and its quick checks pass: the KV cache, its compiled
    step and no cache give the same greedy tokens. Its timing targets are printed, not judged,
    on toy models (its figures are in its README, not asserted here)."""
    result = run_cli([str(ROOT / "experiments" / "pixel_lm_speed" / "run.py"), "--quick"],
                     cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "- PASS: greedy sampling gives the same tokens with the KV cache" in result.stdout
    assert "- FAIL: " not in result.stdout
    assert "| PixelGPT, sdpa |" in result.stdout and "KV cache" in result.stdout
    assert "SKIPPED in --quick: dim 32, depth 2: sampling with the KV cache, compiled step, " \
        "≥ 5× faster" in result.stdout
    assert "SKIPPED in --quick: MFU ≥ 40 %" in result.stdout
    assert "| dim 32, depth 2 | 0 M | 4 | no |" in result.stdout  # the MFU code, on a toy model


@pytest.mark.slow
def test_probe_speed_study_quick_run(tmp_path):
    """The three sides of the probe benchmark run, and lmvision's fits give the same accuracies
    side by side as one after another (its timings are in its README: the quick run prints its
    timing check as skipped)."""
    result = run_cli([str(ROOT / "experiments" / "probe_speed" / "run.py"), "--quick"],
                     cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "- PASS: side by side, the fits give the test accuracies of the same fits one after" \
        in result.stdout
    assert "- SKIPPED in --quick: lmvision's probes at least as fast as the plain loop" \
        in result.stdout
    assert "- FAIL: " not in result.stdout
    sides = ("| plain scikit-learn loop | ", "| lmvision, fits one at a time | ",
             "| lmvision fit_probes | ")
    assert len([line for line in result.stdout.splitlines() if line.startswith(sides)]) == 3


@pytest.mark.slow
def test_pixel_lm_larger_shapes_study_smoke_run(tmp_path):
    """The larger shapes study runs end to end (on the CPU, tiny): judge, pixel LM, its probes
    and gen/acc, gen/acc at another temperature, the results JSON and the sample grids in
    --out, its own training log kept; then again from the kept runs, without training."""
    script = str(ROOT / "experiments" / "pixel_lm" / "larger_shapes.py")
    kept, again = tmp_path / "kept", tmp_path / "again"
    again.mkdir()
    result = run_script_inline(script, ["--smoke", "--out", str(tmp_path), "--keep", str(kept),
                                        "--temperatures", "0.5", "--guidance", "2",
                                        "--gen-samples-per-class", "3"], cwd=tmp_path)
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]  # 1: a check failed, no crash
    data = json.loads((tmp_path / "cpu_shapes.json").read_text())
    assert {"probe/acc_best", "probe/acc_random_init", "gen/acc", "gen/acc_caption"} \
        <= set(data["pixel_lm"])
    settings = [(r["temperature"], r["guidance"]) for r in data["gen_by_setting"]]
    assert settings == [(0.5, 2)]
    assert "| 0.5 | 2 | " in result.stdout and "3 class-conditioned samples per class" in result.stdout
    assert (tmp_path / "cpu_shapes_samples_class.png").stat().st_size > 0
    assert "Run directory:" in (tmp_path / "pixel_lm_train.log").read_text()
    assert "(trained 1 epochs" in result.stdout
    assert "gen/acc sampled at temperature 1, guidance 2)" in result.stdout  # pixel_lm_shapes'
    assert "Data: 300 shapes images" in result.stdout
    assert list((kept / "lm" / "checkpoints").glob("*.ckpt"))

    result = run_script_inline(script, ["--smoke", "--out", str(again), "--from-runs", str(kept),
                                        "--temperatures", "0.5", "--guidance", "2",
                                        "--gen-samples-per-class", "3"], cwd=tmp_path)
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "pixel LM: training" not in result.stdout  # nothing trained again
    redone = json.loads((again / "cpu_shapes.json").read_text())
    assert redone["pixel_lm"]["probe/acc_best"] == data["pixel_lm"]["probe/acc_best"]
    assert redone["gen_by_setting"] == data["gen_by_setting"]  # seeded sampling

    result = run_script_inline(script, ["--smoke", "--lr", "0.01", "--from-runs", str(kept)],
                               cwd=tmp_path)
    assert result.returncode == 1 and "was trained with" in result.stderr  # other options
    assert "Traceback" not in result.stderr, result.stderr[-2000:]  # refused, not crashed


@pytest.mark.slow
def test_data_speed_study_quick_run(tmp_path):
    """Both loaders run on the same files (the figures are in the study's README)."""
    summary = tmp_path / "data_speed.json"
    result = run_cli([str(ROOT / "experiments" / "data_speed" / "run.py"), "--quick",
                      "--summary", str(summary)], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads(summary.read_text())
    assert set(data["png"]) == {"0", "2", "cached"} and data["png"]["2"]["lmvision"] > 0
    assert "| PNG | 2 |" in result.stdout


def test_a_study_names_the_commit_given_for_a_copied_tree(monkeypatch):
    """On a machine whose checkout is a copy (a lent GPU), LMVISION_COMMIT names what was measured."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("studies", ROOT / "experiments" / "studies.py")
    studies = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(studies)
    monkeypatch.setenv("LMVISION_COMMIT", "0123456789abcdef")
    assert "lmvision commit 0123456789." in studies.environment_line()
    monkeypatch.delenv("LMVISION_COMMIT")
    assert "0123456789" not in studies.environment_line()


@pytest.mark.slow
def test_pixel_lm_study_smoke_run(tmp_path):
    """The pixel-LM study runs every part, tiny, at two digits seeds: its tables, the per-seed
    line and the issue's checks (their verdicts on a smoke run mean nothing)."""
    result = run_script_inline(ROOT / "experiments" / "pixel_lm" / "run.py",
                               ["--smoke", "--seeds", "0", "--digits-seeds", "0", "1"], cwd=tmp_path)
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]  # 1: a check failed, no crash
    out = result.stdout
    assert "Seeds 0 1 (digits), 0 (shapes)" in out and "--seeds 0 --digits-seeds 0 1" in out
    ran = re.findall(r"^(digits pretrain|digits finetune|digits CNN|shapes CNN \(judge\)|"
                     r"shapes pretrain) +seed (\d):", out, re.M)
    assert sorted(ran) == sorted([(part, seed) for part in ("digits pretrain", "digits finetune",
                                                             "digits CNN") for seed in "01"]
                                 + [("shapes CNN (judge)", "0"), ("shapes pretrain", "0")])
    assert "Digits probe by seed (each seed draws its own split): seed 0: " in out
    assert "; seed 1: " in out
    assert re.search(r"Cross-validated accuracy of the chosen probes .*: digits: pretrained "
                     r"[0-9.]+ ± [0-9.]+, raw pixels [0-9.]+ ± [0-9.]+, random init [0-9.]+ ± "
                     r"[0-9.]+; shapes: pretrained [0-9.]+, raw pixels [0-9.]+, ", out)
    assert len([line for line in out.splitlines() if line.startswith(("- PASS: ", "- FAIL: "))]) == 4
    rows = [line for line in out.splitlines() if line.startswith(("| digits | ", "| shapes | "))]
    assert len(rows) == 4  # the main table and the table by block, for each data set


def test_pixel_lm_study_smoke_run_refuses_to_write_the_readme(tmp_path):
    result = run_script_inline(ROOT / "experiments" / "pixel_lm" / "run.py",
                               ["--smoke", "--write-readme"], cwd=tmp_path)
    assert result.returncode == 2 and "not for the README" in result.stderr


def test_the_parity_check_fails_on_a_metric_that_differs_or_goes_missing():
    """experiments/refactor_parity compares two checkouts' records: equal metrics pass, one
    that differs or is missing after fails (the study itself needs a second checkout)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(
        "parity", ROOT / "experiments" / "refactor_parity" / "run.py")
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    record = {"status": "completed", "seed": 0}
    before = {"run": ({"test/acc": 0.5, "test/loss": 1.25}, record)}
    assert parity.compare(before, {"run": ({"test/acc": 0.5, "test/loss": 1.25}, record)})[1]
    assert not parity.compare(before, {"run": ({"test/acc": 0.5, "test/loss": 1.2500001},
                                               record)})[1]
    assert not parity.compare(before, {"run": ({"test/acc": 0.5}, record)})[1]
    lines, same = parity.compare(before, {"run": ({**before["run"][0], "new": 1.0},
                                                  {**record, "monitor": "val/acc"})})
    assert same and any("new keys: monitor" in line for line in lines)
