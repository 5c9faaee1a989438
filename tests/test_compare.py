"""`lmvision-compare`: run records in their real formats, written here, grouped over seeds.
Which direction is better comes from the records (``monitor_mode``), never from a name."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import run_cli

from lmvision.compare import compare
from lmvision.errors import UserError
from lmvision.run.comparison import find_runs, read_overrides, summarise


def write_run(root: Path, name: str, overrides: list[str], seed: int, metrics: dict,
              status: str = "completed", curve: list[float] | None = None,
              monitor: str | None = "val/acc", monitor_mode: str | None = "max") -> Path:
    """A run directory as lmvision writes it; ``monitor=None``: an older record, without the
    selection metric and its direction."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in [*overrides, f"seed={seed}", f"hydra.run.dir={run}",
                                     "logger=csv"]))
    record = {"status": status, "seed": seed, "job_type": "train", "fit_seconds": 10.0 + seed}
    if monitor is not None:
        record.update(monitor=monitor, monitor_mode=monitor_mode)
    (run / "run.json").write_text(json.dumps(record))
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
    # test/acc goes the way of the runs' monitor (val/acc, max); test/loss's direction is
    # not recorded: sorting by it needs the user's word
    with pytest.raises(UserError, match="sorting by test/loss .*: which direction is better"):
        summarise(runs, ["test/loss"], sort="test/loss")
    by_loss = summarise(runs, ["test/loss"], sort="test/loss", sort_mode="min")
    assert by_loss[0]["group"] == "backbone=resnet18"
    # a duration is lower-is-better by definition (fit_seconds 10 + seed: equal means here)
    assert summarise(runs, ["fit_seconds"])[0]["fit_seconds"]["mean"] == pytest.approx(11.0)


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
    selects = {"monitor": "val/acc_seen", "monitor_mode": "max"}
    for seed in (0, 1):
        write_run(tmp_path, f"train{seed}", [], seed, {"test/acc_seen": 0.2 + seed * 0.1},
                  **selects)
    evaluated = write_run(tmp_path, "eval", [], 0, {"test/acc_seen": 0.9}, **selects)
    record = json.loads((evaluated / "run.json").read_text())
    (evaluated / "run.json").write_text(json.dumps({**record, "job_type": "eval"}))
    runs, _ = find_runs([str(tmp_path)])
    rows = summarise(runs, ["test/acc_seen"])
    # the test counterpart of the runs' monitor (val/acc_seen, max): higher first
    assert [(r["group"], r["n"]) for r in rows] == [("job_type=eval", 1), ("(no overrides)", 2)]


@pytest.mark.parametrize("monitor, mode, best_first", [
    ("val/score", "min", "backbone=b"),  # nothing in the name says lower is better
    ("val/loss_like_but_max", "max", "backbone=a"),  # "loss" in the name, yet higher is better
])
def test_the_direction_is_the_runs_monitor_mode_not_the_name(tmp_path, capsys, monitor, mode,
                                                             best_first):
    name = monitor[len("val/"):]
    for seed in (0, 1, 2):
        for backbone, value in (("a", 3.0), ("b", 2.0)):
            write_run(tmp_path, f"{backbone}{seed}", [f"backbone={backbone}"], seed,
                      {f"test/{name}": value + seed / 10, f"val/{name}_best": value,
                       monitor: value}, monitor=monitor, monitor_mode=mode)
    runs, _ = find_runs([str(tmp_path)])
    for metric in (f"test/{name}", f"val/{name}_best", monitor):
        assert summarise(runs, [metric])[0]["group"] == best_first, metric
    # the default metrics follow the monitor, and the command sorts the same way
    rows = compare([str(tmp_path), "--format", "markdown"])
    assert [r["group"] for r in rows][0] == best_first
    assert f"test/{name} (mean" in capsys.readouterr().out
    # --sort-mode overrides the runs' direction
    other = {"min": "max", "max": "min"}[mode]
    assert summarise(runs, [f"test/{name}"], sort_mode=other)[0]["group"] != best_first


def test_an_unknown_or_disputed_direction_needs_sort_mode(tmp_path):
    older, disputed = tmp_path / "older", tmp_path / "disputed"
    for seed in (0, 1):  # records written before run.json held monitor and monitor_mode
        write_run(older, f"a{seed}", ["backbone=a"], seed, {"test/acc": 0.5, "test/ece": 0.1},
                  monitor=None)
        write_run(older, f"b{seed}", ["backbone=b"], seed, {"test/acc": 0.7, "test/ece": 0.3},
                  monitor=None)
        for backbone, mode in (("a", "max"), ("b", "min")):
            write_run(disputed, f"{backbone}{seed}", [f"backbone={backbone}"], seed,
                      {"test/acc": 0.5}, monitor_mode=mode)
    runs, _ = find_runs([str(older)])
    for metric in ("test/acc", "test/ece"):
        with pytest.raises(UserError, match=f"sorting by {metric} .*give --sort-mode max or"):
            summarise(runs, [metric])
    assert [r["group"] for r in summarise(runs, ["test/ece"], sort_mode="min")] == \
        ["backbone=a", "backbone=b"]
    assert [r["group"] for r in summarise(runs, ["test/ece"], sort_mode="max")] == \
        ["backbone=b", "backbone=a"]
    assert summarise(runs, ["test/ece", "test/acc"], sort="test/acc", sort_mode="max")[0][
        "group"] == "backbone=b"
    with pytest.raises(UserError) as error:  # one run says max and the other min: one line
        compare([str(disputed), "-m", "test/acc", "--format", "csv"])
    message = str(error.value)
    assert "test/acc: the runs disagree on which direction is better (monitor_mode max in 2 " \
        "run(s)" in message and "min in 2 run(s)" in message and "\n" not in message
    assert len(compare([str(disputed), "-m", "test/acc", "--sort-mode", "max"])) == 2


def test_a_resumed_run_is_grouped_by_its_effective_overrides(tmp_path):
    """A run resumed in place keeps its first overrides; each resume's (resume-1, ... in
    numeric order: resume-10 comes after resume-2) update them key by key."""
    write_run(tmp_path, "long", ["backbone=a", "trainer.max_epochs=8"], 0, {"test/acc": 0.9})
    write_run(tmp_path, "short", ["backbone=a", "trainer.max_epochs=4"], 1, {"test/acc": 0.5})
    resumed = write_run(tmp_path, "resumed", ["backbone=a", "trainer.max_epochs=4"], 1,
                        {"test/acc": 0.8})
    for n in range(1, 11):
        changed = {2: ["+trainer.max_epochs=6"], 10: ["trainer.max_epochs=8"]}.get(n, [])
        (resumed / ".hydra" / f"resume-{n}").mkdir()
        (resumed / ".hydra" / f"resume-{n}" / "overrides.yaml").write_text("".join(
            f"- {o}\n" for o in [f"ckpt_path={resumed}/checkpoints/last.ckpt", *changed]))
    assert sorted(read_overrides(resumed, {})) == [
        "backbone=a", f"ckpt_path={resumed}/checkpoints/last.ckpt", f"hydra.run.dir={resumed}",
        "logger=csv", "seed=1", "trainer.max_epochs=8"]
    rows = summarise(find_runs([str(tmp_path)])[0], ["test/acc"])
    assert [(r["group"], r["seeds"]) for r in rows] == [
        ("backbone=a trainer.max_epochs=8", [0, 1]), ("backbone=a trainer.max_epochs=4", [1])]
    assert rows[0]["test/acc"]["mean"] == pytest.approx(0.85)


def test_identical_paired_differences_give_no_p_and_say_why(tmp_path, capsys):
    """Two seeds, every difference +0.1: zero variance, so no t statistic (not p = 0)."""
    for seed, value in ((0, 0.8), (1, 0.9)):
        write_run(tmp_path, f"a{seed}", ["backbone=a"], seed, {"test/acc": value})
        write_run(tmp_path, f"b{seed}", ["backbone=b"], seed, {"test/acc": value + 0.1})
        write_run(tmp_path, f"c{seed}", ["backbone=c"], seed, {"test/acc": value})
    rows = {r["group"]: r["test/acc"] for r in
            compare([str(tmp_path), "-m", "test/acc", "--baseline", "backbone=a",
                     "--format", "markdown"])}
    out, err = capsys.readouterr()
    assert rows["backbone=b"]["pairs"] == 2 and math.isnan(rows["backbone=b"]["p"])
    assert "identical paired differences (+0.1 for every seed" in rows["backbone=b"]["p_note"]
    assert rows["backbone=c"]["p"] == 1.0 and rows["backbone=c"]["p_note"] is None  # no change
    assert "| backbone=b | 2 | 0.9500 ± 0.0707 [±0.6353] p=n/a |" in out
    assert "warning: p of test/acc not computable for backbone=b: identical paired " \
        "differences (+0.1 for every seed" in err
    compare([str(tmp_path), "-m", "test/acc", "--baseline", "backbone=a", "--format", "json"])
    data = {g["group"]: g["test/acc"] for g in json.loads(capsys.readouterr().out)}
    assert data["backbone=b"]["p"] is None and "identical" in data["backbone=b"]["p_note"]


def test_a_seed_run_twice_counts_once_in_the_interval(tmp_path):
    for seed, value in ((0, 0.8), (1, 0.9), (2, 1.0)):
        write_run(tmp_path, f"{seed}", [], seed, {"test/acc": value})
    write_run(tmp_path, "again", [], 0, {"test/acc": 0.6})  # seed 0 once more: 0.7 on average
    (row,) = summarise(find_runs([str(tmp_path)])[0], ["test/acc"])
    # per seed 0.7, 0.9, 1.0: mean 2.6 / 3, squared deviations sum to 0.07 / 1.5, df 2
    assert row["n"] == 4 and row["test/acc"]["n"] == 3
    assert row["test/acc"]["mean"] == pytest.approx(2.6 / 3)
    assert row["test/acc"]["std"] == pytest.approx(math.sqrt(0.07 / 3))
    assert row["test/acc"]["ci95"] == pytest.approx(4.302653 * math.sqrt(0.07 / 3) / math.sqrt(3))


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "no such directory"),
    (["{sweep}", "-m", "test/accuracy"], "--metric test/accuracy: no run has it; known:"),
    (["{sweep}", "--baseline", "backbone=vit"], "--baseline 'backbone=vit' matches 0 groups"),
    (["{sweep}", "-m", "test/acc", "--sort", "test/loss"], "--sort test/loss: not one of"),
    (["{sweep}", "-m", "test/loss"], "sorting by test/loss (--sort, default the first metric): "
                                     "which direction is better is not known"),
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
