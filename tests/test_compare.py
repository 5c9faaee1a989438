"""`lmvision-compare`: run records in their real formats, written here, grouped over seeds."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import run_cli

from lmvision.compare import compare, find_runs, summarise


def write_run(root: Path, name: str, overrides: list[str], seed: int, metrics: dict,
              status: str = "completed", curve: list[float] | None = None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in [*overrides, f"seed={seed}", f"hydra.run.dir={run}",
                                     "logger=csv"]))
    (run / "run.json").write_text(json.dumps({"status": status, "seed": seed, "job_type": "train",
                                              "fit_seconds": 10.0 + seed}))
    if status == "completed":
        (run / "metrics.json").write_text(json.dumps(metrics))
    if curve:
        (run / "csv").mkdir()
        with (run / "csv" / "metrics.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "step", "val/acc", "train/loss"])
            for epoch, value in enumerate(curve):
                writer.writerow([epoch, epoch * 10, value, ""])
                writer.writerow([epoch, epoch * 10, "", 1.0 - value])
    return run


@pytest.fixture
def sweep(tmp_path):
    """Two configurations over three seeds, one failed run, one run elsewhere."""
    root = tmp_path / "sweep"
    base = [0.80, 0.90, 1.00]
    lifted = [0.90, 1.10, 1.30]  # base + 0.1, 0.2, 0.3 for seeds 0, 1, 2
    for seed in range(3):
        write_run(root, f"{seed}", ["backbone=small_cnn"], seed,
                  {"test/acc": base[seed], "val/acc_best": 0.5, "test/loss": 1.0},
                  curve=[0.3, 0.5, base[seed]])
        write_run(root, f"{seed + 3}", ["backbone=resnet18"], seed,
                  {"test/acc": lifted[seed], "val/acc_best": 0.6, "test/loss": 0.5},
                  curve=[0.4, 0.6, lifted[seed]])
    write_run(root, "6", ["backbone=resnet18"], 3, {}, status="failed")
    return root


def test_groups_differ_only_in_seed_with_hand_checked_statistics(sweep):
    runs, unfinished = find_runs([str(sweep)])
    assert len(runs) == 6 and unfinished == 1
    rows = summarise(runs, ["test/acc", "test/loss"], baseline="backbone=small_cnn")
    assert [r["group"] for r in rows] == ["backbone=resnet18", "backbone=small_cnn"]  # best first
    lifted, base = rows
    assert base["baseline"] and base["n"] == 3 and base["seeds"] == [0, 1, 2]
    assert base["test/acc"]["mean"] == pytest.approx(0.9)
    assert base["test/acc"]["std"] == pytest.approx(0.1)
    assert base["test/acc"]["ci95"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3))  # t(0.975, 2)
    # paired over seeds: differences 0.1, 0.2, 0.3 -> t = 0.2 / (0.1 / sqrt 3) = 3.464, df 2
    assert lifted["test/acc"]["pairs"] == 3
    assert lifted["test/acc"]["p"] == pytest.approx(0.07418, abs=1e-4)
    # the same sweep read twice: each seed still pairs once
    twice = summarise(runs + runs, ["test/acc"], baseline="backbone=small_cnn")
    assert twice[0]["n"] == 6 and twice[0]["test/acc"]["pairs"] == 3
    assert twice[0]["test/acc"]["p"] == pytest.approx(0.07418, abs=1e-4)
    # a loss sorts the other way: lower first
    by_loss = summarise(runs, ["test/loss"], sort="test/loss")
    assert by_loss[0]["group"] == "backbone=resnet18"


def test_the_command_prints_each_format_and_writes_charts(sweep, tmp_path, capsys):
    rows = compare([str(sweep), "--format", "markdown", "--plot", str(tmp_path / "charts")])
    out, err = capsys.readouterr()
    assert "| backbone=small_cnn | 3 | 0.9000 ± 0.1000" in out
    assert "1 run(s) not completed" in err
    assert [r["group"] for r in rows] == ["backbone=resnet18", "backbone=small_cnn"]
    # default metrics: the test metric the runs select on (val/acc_best -> test/acc), and it
    assert "test/acc (mean" in out and "val/acc_best (mean" in out
    charts = sorted(p.name for p in (tmp_path / "charts").iterdir())
    assert charts == ["bar_test_acc.png", "bar_val_acc_best.png", "curves_val_acc.png"]
    assert all((tmp_path / "charts" / c).read_bytes()[:4] == b"\x89PNG" for c in charts)

    compare([str(sweep / "*"), "--format", "csv", "-m", "test/acc"])  # a glob of run dirs
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("group,n,test/acc mean") and len(lines) == 3
    compare([str(sweep), "--format", "json", "-m", "fit_seconds"])
    data = json.loads(capsys.readouterr().out)
    assert {g["group"]: g["fit_seconds"]["mean"] for g in data} == \
        {"backbone=small_cnn": 11.0, "backbone=resnet18": 11.0}
    compare([str(sweep), "--format", "rich", "-m", "test/acc"])
    assert "backbone=resnet18" in capsys.readouterr().out


def test_a_group_of_one_seed_warns_and_json_stays_strict(tmp_path, capsys):
    write_run(tmp_path, "only", ["optimizer.lr=0.1"], 0, {"test/acc": 0.5})
    compare([str(tmp_path), "--format", "markdown", "-m", "test/acc"])
    captured = capsys.readouterr()
    assert "| optimizer.lr=0.1 | 1 | 0.5000 |" in captured.out
    assert "fewer than 3 seeds" in captured.err
    compare([str(tmp_path), "--format", "json", "-m", "test/acc"])
    text = capsys.readouterr().out
    assert "NaN" not in text and json.loads(text)[0]["test/acc"]["std"] is None


def test_an_evaluation_is_not_grouped_with_training_and_sorting_follows_the_metric(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, f"train{seed}", [], seed, {"test/acc_seen": 0.2 + seed * 0.1})
    evaluated = write_run(tmp_path, "eval", [], 0, {"test/acc_seen": 0.9})
    record = json.loads((evaluated / "run.json").read_text())
    (evaluated / "run.json").write_text(json.dumps({**record, "job_type": "eval"}))
    runs, _ = find_runs([str(tmp_path)])
    rows = summarise(runs, ["test/acc_seen"])
    # higher is better for an accuracy, even one whose name ends in "_seen"
    assert [(r["group"], r["n"]) for r in rows] == [("job_type=eval", 1), ("(no overrides)", 2)]


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "no such directory"),
    (["{sweep}", "-m", "test/accuracy"], "--metric test/accuracy: no run has it; known:"),
    (["{sweep}", "--baseline", "backbone=vit"], "--baseline 'backbone=vit' matches 0 groups"),
    (["{sweep}", "-m", "test/acc", "--sort", "test/loss"], "--sort test/loss: not one of"),
    (["{empty}"], "no completed runs under"),
    (["--wandb", "nobody/nothing"], "--wandb nobody/nothing: cannot read the project from W&B"),
])
def test_bad_input_is_one_line_and_exit_status_2(sweep, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"sweep": sweep, "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    result = run_cli(["-m", "lmvision.compare", *[a.format(**paths) for a in args]],
                     cwd=tmp_path, timeout=120, env={"WANDB_API_KEY": None})
    assert result.returncode == 2
    assert result.stderr.startswith("lmvision: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
