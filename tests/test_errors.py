"""Bad input as a user types it: one line naming the option or file, exit status 2, a run
record marked failed where the run had started, and nothing of another run touched. Bugs
(exceptions lmvision did not raise on purpose) keep their traceback."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from conftest import ROOT, compose, run_cli, run_inline

TINY = ["data.num_images=300", "logger=csv", "debug=limit"]


def run_train(args: list[str], run_dir: Path, module: str = "lmvision.train"):
    """A command as a user types it (run in this process: the imports are paid once)."""
    return run_inline(["-m", module, *args, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)


def assert_one_line_error(result, message: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("lmvision: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A real image_classifier checkpoint and a real fusion one, trained once for the module."""
    from lmvision.train import train

    root = tmp_path_factory.mktemp("ckpts")
    train(compose(TINY, root / "image"))
    train(compose([*TINY, "experiment=fusion_shapes"], root / "fusion"))
    return {"image": root / "image" / "checkpoints" / "last.ckpt",
            "fusion": root / "fusion" / "checkpoints" / "last.ckpt"}


# Mistakes Hydra meets while composing the config: nothing has started, nothing is written.
# (docs/bad_input.md lists these messages, and those of BAD_VALUES and CHECKPOINTS)
CONFIG_MISTAKES = [
    ("trainer.max_epoch=3", "trainer.max_epoch: no such option; did you mean trainer.max_epochs?"),
    ("data.taget=x", "data.taget: no such option; did you mean data.target?"),
    ("data=imagenet", "data=imagenet: no such option; choose one of cifar10, cifar100, "
                      "coco_captions, digits, hf, image_folder, jsonl, shapes"),
    ("lr=-0.1", "lr: no such option; did you mean optimizer.lr?"),
    ("optim.lr=abc", "optim.lr: no such option; did you mean optimizer.lr?"),
    ("batch_size=1.5", "batch_size: no such option; did you mean data.batch_size or "
                       "explain.batch_size?"),
    ("trainer.max_epochs=[1", "cannot read the override 'trainer.max_epochs=[1'"),
]


@pytest.mark.parametrize("arg,message", CONFIG_MISTAKES)
def test_config_mistakes_are_one_line(tmp_path, arg, message):
    result = run_train([arg, "logger=csv"], tmp_path / "run")
    assert_one_line_error(result, message)
    assert not (tmp_path / "run").exists()


# Mistakes in values: the run had started, so its record says failed. (In-process, for speed:
# the command-line form of the same error is checked once below.) A value a class refuses names
# the option the user wrote, where the value came from (data.batch_size, not its argument).
BAD_VALUES = [
    (["optimizer.lr=abc"], "optimizer.lr='abc': expected a number"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1: expected a number > 0"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc': expected a whole number or null"),
    (["seed=foo"], "seed='foo': expected a whole number"),
    (["data.batch_size=1.5"], "data.batch_size=1.5: expected a whole number"),
    (["strategy.monitor=val/nope"], "strategy.monitor='val/nope' is not a metric of this strategy"),
    (["strategy.monitor_mode=up"], "strategy.monitor_mode='up': choose one of max, min"),
    (["data.target=size_of_moon"], "data.target='size_of_moon' is not a target of the shapes dataset"),
    (["backbone=resnet18", "backbone.name=resnet_999"], "backbone.name='resnet_999': not a torchvision model"),
    (["data.val_fraction=0.7", "data.test_fraction=0.5"], "leaves nothing to train on"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path=/nonexistent/last.ckpt: no such checkpoint file"),
    (["train=false"], "train=false tests a checkpoint: give ckpt_path"),
    (["init_from=/nonexistent.ckpt"], "init_from=/nonexistent.ckpt: no such checkpoint file"),
    (["+backbone.depth=3"], "backbone.depth: no such option of lmvision.nn.image_encoders.SmallCNN"),
    (["experiment=fusion_shapes", "+strategy.foo=1"],
     "strategy.foo: no such option of lmvision.strategies.fusion.FusionStrategy"),
    (["stop_after_epochs=0"], "stop_after_epochs=0: expected a whole number of epochs, at least 1"),
    (["init_from_prefix=image_encoder"], "init_from_prefix names a part of the weights of init_from"),
    (["experiment=fusion_shapes", "strategy.net.mode=both"],
     "strategy.net.mode='both': choose one of fused, image_only, text_only"),
    (["experiment=fusion_shapes", "text_encoder.pooling=max"],
     "text_encoder.pooling='max': choose one of mean, cls"),
]


@pytest.mark.parametrize("args,message", BAD_VALUES)
def test_bad_values_are_user_errors_and_recorded(make_cfg, tmp_path, args, message):
    from lmvision.errors import UserError
    from lmvision.train import train

    with pytest.raises(UserError) as caught:
        train(make_cfg(*args, *TINY))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and message in record["error"]


def test_a_bad_value_on_the_command_line_is_one_line(tmp_path):
    run = tmp_path / "run"
    assert_one_line_error(run_train(["seed=foo", *TINY], run), "seed='foo': expected a whole number")
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


# Bad checkpoints, and resumes that would change what is learned: {names} are the checkpoints
# of test_bad_checkpoints_are_user_errors (loose copies, outside their run's directory, except
# run_image, in its run's directory)
CHECKPOINTS = [
    (["ckpt_path={empty}"], "ckpt_path={empty}: the file is empty, not a checkpoint"),
    (["ckpt_path={truncated}"], "ckpt_path={truncated}: not a readable checkpoint"),
    # a resume takes the run's config from its checkpoint: an option that would change what is
    # learned is refused, naming it
    (["ckpt_path={image}", "backbone=resnet18"],
     "ckpt_path={image}: cannot resume with backbone=resnet18: the run was trained with "
     "backbone=small_cnn"),
    (["ckpt_path={fusion}", "strategy=image_classifier"],
     "ckpt_path={fusion}: cannot resume with strategy=image_classifier: the run was trained with "
     "strategy=fusion"),
    # testing one (train=false) rebuilds it from its config, with what the command line chose
    (["ckpt_path={fusion}", "train=false", "strategy=image_classifier"],
     "ckpt_path={fusion}: a checkpoint of strategy 'fusion', but this run's strategy is "
     "'image_classifier'; add strategy=fusion"),
    (["ckpt_path={image}", "train=false", "backbone=resnet18"],
     "ckpt_path={image}: its weights do not fit this model"),
    (["init_from={truncated}"], "init_from={truncated}: not a readable checkpoint"),
    (["init_from={run_image}", "init_from_prefix=text_encoder"],
     "init_from_prefix='text_encoder': this network has no such sub-module"),
]
ELSEWHERE = "ckpt_path={run_image}: a resume continues its run, in {run}"
TAKEN = "{run} already holds a run (run.json, status completed)"


def shown(template: str) -> str:
    """A message as docs/bad_input.md shows it: <run dir> and <checkpoint> for the paths."""
    return re.sub(r"\{\w+\}", "<checkpoint>", template.replace("{run}", "<run dir>"))


def test_the_messages_are_documented():
    doc = (ROOT / "docs" / "bad_input.md").read_text()
    messages = [m for _, m in CONFIG_MISTAKES + BAD_VALUES] + \
        [shown(m) for _, m in CHECKPOINTS] + [shown(ELSEWHERE), shown(TAKEN)]
    for message in messages:
        assert f"`{message}" in doc, message


def test_bad_checkpoints_are_user_errors(make_cfg, tmp_path, checkpoints):
    from lmvision.errors import UserError
    from lmvision.train import train

    # checkpoints passed around on their own (outside their run's directory)
    empty, truncated, image, fusion = (tmp_path / f"{n}.ckpt" for n in ("empty", "truncated",
                                                                        "image", "fusion"))
    empty.write_bytes(b"")
    data = checkpoints["image"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    image.write_bytes(data)
    fusion.write_bytes(checkpoints["fusion"].read_bytes())
    paths = {"empty": empty, "truncated": truncated, "image": image, "fusion": fusion,
             "run_image": checkpoints["image"]}
    for i, (args, message) in enumerate(CHECKPOINTS):
        args, message = [a.format(**paths) for a in args], message.format(**paths)
        with pytest.raises(UserError) as caught:
            train(make_cfg(*args, *TINY, output_dir=tmp_path / f"run{i}"))
        assert message in str(caught.value) and "\n" not in str(caught.value), args
        assert not list((tmp_path / f"run{i}").rglob("*.ckpt"))  # stopped before training
    # a loose checkpoint alone resumes its own run's strategy and config (here fusion), in a new
    # run directory
    resumed = train(make_cfg(f"ckpt_path={fusion}", *TINY, output_dir=tmp_path / "loose"))
    record = json.loads((tmp_path / "loose" / "run.json").read_text())
    assert record["status"] == "completed" and record["resumed_from"] == str(fusion)
    assert record["choices"]["strategy"] == "fusion" and "test/acc_no_text" in resumed
    # the same from the command line, for training and for evaluation
    assert_one_line_error(run_train([f"ckpt_path={truncated}", *TINY], tmp_path / "cli"),
                          "not a readable checkpoint")
    result = run_train([f"ckpt_path={truncated}"], tmp_path / "eval", module="lmvision.evaluate")
    assert_one_line_error(result, "not a readable checkpoint")


def test_a_resume_continues_its_own_run_only(make_cfg, tmp_path, checkpoints):
    """Resuming elsewhere would fork a run's record, best checkpoint and W&B run: refused, in
    one line, before Hydra writes anything (init_from is the way to start a new run)."""
    from lmvision.errors import UserError
    from lmvision.train import train

    elsewhere = tmp_path / "elsewhere"
    message = ELSEWHERE.format(run_image=checkpoints["image"], run=checkpoints["image"].parent.parent)
    assert_one_line_error(run_train([f"ckpt_path={checkpoints['image']}", *TINY], elsewhere), message)
    assert not elsewhere.exists()
    with pytest.raises(UserError, match="init_from="):
        train(make_cfg(f"ckpt_path={checkpoints['image']}", *TINY, output_dir=elsewhere))


def test_a_bug_keeps_its_traceback(tmp_path):
    """An error lmvision did not raise on purpose (here torchvision's, for an option the user
    added) is not dressed up as a user mistake."""
    run = tmp_path / "run"
    result = run_train(["backbone=torchvision", "backbone.name=resnet18", "+backbone.no_such_arg=1",
                        *TINY], run)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "no_such_arg" in result.stderr
    assert "lmvision: error:" not in result.stderr
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and "no_such_arg" in record["error"]


def test_a_run_never_writes_over_another_run(tmp_path):
    run = tmp_path / "run"
    first = run_train(TINY, run)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_bytes() for p in [run / "run.json", run / ".hydra" / "config.yaml",
                                          run / "metrics.json"]}
    second = run_train([*TINY, "seed=5"], run)
    assert_one_line_error(second, TAKEN.format(run=run.resolve()))
    assert all(p.read_bytes() == data for p, data in before.items())
    evaluated = run_train([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run,
                          module="lmvision.evaluate")
    assert_one_line_error(evaluated, "already holds a run")


@pytest.mark.slow
def test_resume_in_place_from_the_command_line_keeps_the_first_config(tmp_path):
    run = tmp_path / "run"
    args = ["data.num_images=300", "logger=wandb", "trainer.max_epochs=2"]
    assert run_train([*args, "stop_after_epochs=1"], run).returncode == 0
    first_config = (run / ".hydra" / "config.yaml").read_bytes()
    first_id = json.loads((run / "run.json").read_text())["wandb"]["id"]
    resumed = run_train([*args, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / ".hydra" / "config.yaml").read_bytes() == first_config
    assert "ckpt_path" in (run / ".hydra" / "resume-1" / "overrides.yaml").read_text()
    record = json.loads((run / "run.json").read_text())
    assert record["restarts"] == 1 and record["wandb"]["id"] == first_id  # the same W&B run
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(names) == 2 and names[1] == "last.ckpt" and not any("-v" in n for n in names)


def test_eval_help_shows_eval_examples(tmp_path):
    result = run_cli(["-m", "lmvision.evaluate", "--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert "lmvision-eval ckpt_path=" in result.stdout and "lmvision.train data=digits" not in result.stdout


def test_a_split_without_some_classes_says_so(make_cfg, tmp_path):
    from lmvision.data.datamodule import SplitWarning
    from lmvision.train import train

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(make_cfg("data.num_images=10", "logger=csv", "debug=fdr"))
    messages = [str(w.message) for w in caught if issubclass(w.category, SplitWarning)]
    assert any(m.startswith("the test split (2 items) has no example of") for m in messages), messages
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["data_warnings"] == messages
