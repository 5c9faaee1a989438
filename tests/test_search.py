"""Optuna searches (hparams_search=<strategy>, hydra/sweeper=optuna_search): the search spaces,
a study that continues where it stopped, failed and interrupted trials, the summary."""

from __future__ import annotations

import json

import optuna
import pytest
from conftest import CONF, run_inline
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.lmvision_search.search_sweeper import (
    OptunaSearchSweeper,
    check_options,
    fail_stale_trials,
    split_arguments,
)
from lmvision.errors import UserError
from lmvision.train import train

SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
# the run each search space is meant for (its search space's comment): the overrides that pick it
EXPERIMENT_OF = {"image_classifier": [], "fusion": ["experiment=fusion_shapes"],
                 "aux_text": ["experiment=aux_text_shapes"],
                 "pixel_lm": ["experiment=pixel_lm_digits"],
                 # fine-tuning (usually from a pretrained run's init_from; it also works from
                 # scratch, fitting its own palette)
                 "pixel_lm_finetune": ["experiment=pixel_lm_digits", "strategy=pixel_lm_finetune"],
                 "captioner": ["experiment=captioner_shapes"]}
TINY = ["data.num_images=300", "trainer=cpu", "logger=csv", "debug=limit"]


def test_there_is_one_search_space_per_strategy():
    strategies = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))
    assert SEARCHES == strategies == sorted(EXPERIMENT_OF)


def test_search_syntax_becomes_optuna_distributions():
    fixed, space = split_arguments(
        ["seed=1", "head=mlp", "data.batch_size=choice(16,32)"],
        {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "strategy.net.depth": "range(2, 7, 2)",
         "data.image_size": "tag(int, interval(8, 16))", "x.share": "range(0.1, 0.4, 0.1)",
         "head": "choice(linear, mlp)", "trainer.max_epochs": "3"})
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["strategy.net.depth"] == IntDistribution(2, 6, step=2)
    assert space["data.image_size"] == IntDistribution(8, 16)
    assert space["data.batch_size"] == CategoricalDistribution([16, 32])
    assert space["head"] == CategoricalDistribution(["linear", "mlp"])
    assert isinstance(space["x.share"], FloatDistribution) and space["x.share"].step == 0.1
    assert sorted(fixed) == ["seed=1", "trainer.max_epochs=3"]  # a searched key is not fixed


def test_bad_search_options_are_named():
    # UserError, not SearchError: Hydra's plugin scan may execute the plugin module again,
    # giving it a new SearchError class (a subclass of the same UserError)
    with pytest.raises(UserError, match="the search space is empty"):
        split_arguments(["seed=1"], {})
    for option, value, message in (("direction", "up", "expected maximize or minimize"),
                                   ("n_trials", 0, "n_trials=0: expected a whole number"),
                                   ("max_failure_rate", 2.0, "a share between 0 and 1")):
        sweeper = OptunaSearchSweeper(study_name="s")
        setattr(sweeper, option, value)
        with pytest.raises(UserError, match=message):
            check_options(sweeper)


def test_trials_left_running_by_a_kill_are_marked_failed(tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}")
    study.ask({"x": FloatDistribution(0, 1)})  # asked, never told: the sweep was killed
    fail_stale_trials(study)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["error"].startswith("interrupted")


@pytest.mark.parametrize("search", SEARCHES)
def test_every_search_space_names_real_options_and_runs(make_cfg, tmp_path, search):
    """Each point of the space composes and trains (the lowest value of each range and the
    first of each choice here)."""
    space = OmegaConf.load(CONF / "hparams_search" / f"{search}.yaml").hydra.sweeper.params
    _, distributions = split_arguments([], dict(space))
    point = []
    for key, dist in distributions.items():
        value = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
        point.append(f"{key}={value}")
    metrics = train(make_cfg(*EXPERIMENT_OF[search], *point, "debug=fdr"))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert metrics and record["status"] == "completed"
    assert record["choices"]["strategy"] == search  # the strategy the space is for


def summary(sweep) -> dict:
    return json.loads((sweep / "search_summary.json").read_text())


@pytest.mark.slow
def test_the_same_command_continues_the_study(tmp_path):
    search = ["-m", "lmvision.train", "-m", "hparams_search=image_classifier", *TINY]
    first = run_inline([*search, "hydra.sweeper.n_trials=2"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = tmp_path / "multirun" / "image_classifier" / "search" / "image_classifier"
    assert summary(sweep)["trials"] == 2
    again = run_inline([*search, "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    result = summary(sweep)
    assert (result["trials"], result["complete"], result["failed"]) == (3, 3, 0)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2"]  # trial numbers went on: no job directory written twice
    study = optuna.load_study(study_name="image_classifier", storage=f"sqlite:///{sweep / 'optuna.db'}")
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 3  # no trial repeated
    best = result["best"]
    metric = json.loads((sweep / str(best["number"]) / "metrics.json").read_text())["val/acc_best"]
    assert best["value"] == pytest.approx(metric)
    assert "Search image_classifier: 3 trials, 3 complete, 0 failed" in again.stdout
    other = run_inline([*search, "hydra.sweeper.n_trials=4", "seed=5"], cwd=tmp_path)
    assert other.returncode == 2 and "was started with the overrides" in other.stderr


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_search_stops_at_the_failure_rate(tmp_path):
    failing = ["-m", "lmvision.train", "-m", "hparams_search=image_classifier", *TINY,
               "data.batch_size=choice(0)"]  # every trial fails before training
    tolerant = run_inline([*failing, "hydra.sweeper.n_trials=2",
                           "hydra.sweeper.max_failure_rate=1.0",
                           "hydra.sweeper.study_name=tolerant"], cwd=tmp_path)
    assert tolerant.returncode == 0, tolerant.stderr[-3000:]
    result = summary(tmp_path / "multirun" / "image_classifier" / "search" / "tolerant")
    assert (result["trials"], result["failed"], result["best"]) == (2, 2, None)
    assert all("data.batch_size" in t["error"] for t in result["failed_trials"])
    strict = run_inline([*failing, "hydra.sweeper.n_trials=4",
                         "hydra.sweeper.study_name=strict"], cwd=tmp_path)
    assert strict.returncode == 2
    assert "1 of 1 trials failed, more than hydra.sweeper.max_failure_rate=0.5" in strict.stderr
    assert summary(tmp_path / "multirun" / "image_classifier" / "search" / "strict")["trials"] == 1
