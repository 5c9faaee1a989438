"""Every option of every config group composes, resolves and (where it can here) instantiates."""

from __future__ import annotations

import pytest
from conftest import CONF, ROOT, run_cli
from data_files import overrides_for
from hydra.utils import instantiate
from omegaconf import OmegaConf

GROUPS = ["data", "strategy", "inputs", "evaluation", "backbone", "head", "text_encoder", "fusion",
          "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths", "debug", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS + ["hydra"]:
        assert options(group), f"conf/{group}/ has no options"
    assert {"default", "cpu", "gpu", "ddp", "ddp_cpu"} <= set(options("trainer"))
    assert {"wandb", "csv", "tensorboard", "many"} <= set(options("logger"))
    assert {"fdr", "limit"} <= set(options("debug"))
    assert {"adamw", "sgd"} <= set(options("optimizer"))
    assert {"warmup_cosine", "constant", "none"} <= set(options("scheduler"))
    assert {"default", "early_stopping"} <= set(options("callbacks"))
    # inputs= and evaluation= default to the strategy's own option
    assert set(options("strategy")) <= set(options("inputs")) & set(options("evaluation"))
    assert "none" in options("evaluation")


def files_for(group: str, option: str, where) -> list[str]:
    """Data options and experiments that read a user's files get tiny real ones."""
    if group == "data":
        return overrides_for(option, where)
    if group == "experiment" and option == "pixel_lm_cifar10":
        return overrides_for("cifar10", where)
    return []


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes_and_resolves(make_cfg, tmp_path, group, option):
    cfg = make_cfg(f"{group}={option}", *files_for(group, option, tmp_path))
    from lmvision.config.build import config_container

    resolved = config_container(cfg, resolve=True)
    assert resolved["paths"]["output_dir"]
    assert resolved["data"]["num_classes"] >= 2


@pytest.mark.parametrize("option", options("data"))
def test_data_instantiates(make_cfg, tmp_path, option):
    cfg = make_cfg(f"data={option}", *overrides_for(option, tmp_path))
    dm = instantiate(cfg.data.datamodule)
    assert dm.num_classes == cfg.data.num_classes == len(dm.classes)
    assert (dm.image_size, dm.channels) == (cfg.data.image_size, cfg.data.channels)


@pytest.mark.parametrize("option", options("backbone"))
@pytest.mark.parametrize("data", ["shapes", "digits"])
def test_backbone_instantiates_for_each_dataset(make_cfg, option, data):
    import torch

    if option == "timm":
        pytest.importorskip("timm")
    cfg = make_cfg(f"backbone={option}", f"data={data}")
    encoder = instantiate(cfg.backbone)
    images = torch.randn(2, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    assert encoder(images).shape == (2, encoder.out_dim)


@pytest.mark.parametrize("head", options("head"))
# pixel_lm is a language model of pixels, with no head, and its fine-tune's head is a linear
# layer on the last block (tests/test_pixel_lm.py); the captioner decodes captions, its optional
# classification head is a linear layer (tests/test_captioner.py)
@pytest.mark.parametrize("strategy", [s for s in options("strategy")
                                      if s not in ("pixel_lm", "pixel_lm_finetune", "captioner")])
def test_strategy_and_head_instantiate(make_cfg, strategy, head):
    import torch

    from lmvision.config.build import group_choices
    from lmvision.run.parts import build_parts

    cfg = make_cfg(f"strategy={strategy}", f"head={head}", "data.num_images=100")
    datamodule, text, model = build_parts(cfg, {}, group_choices())
    # the text side is built before the network, for the strategies that read text
    assert (text is None) == (strategy == "image_classifier")
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert model.logits(batch).shape == (len(batch["label"]), 4)
    # the network is a plain module (usable without Lightning), its head the configured one
    import pytorch_lightning as pl

    assert isinstance(model.net, torch.nn.Module) and not isinstance(model.net, pl.LightningModule)
    if strategy == "aux_text":  # text prototypes stand in for a head
        assert type(model.net).__name__ == "PrototypeClassifier" and not hasattr(model.net, "head")
    else:
        assert type(model.net.head).__name__ == {"linear": "LinearHead", "mlp": "MLPHead"}[head]


@pytest.mark.parametrize("option", options("text_encoder"))
def test_text_encoders_instantiate(make_cfg, option, tmp_path):
    from lmvision.text.hub import minilm_path

    cfg = make_cfg(f"text_encoder={option}")
    if option == "hf":  # its default, bert-base-uncased, needs the hub: use a local copy instead
        cfg.text_encoder.name_or_path = minilm_path()
    tokenizer = instantiate(cfg.text_encoder.tokenizer)(["a red circle", "a blue square"])
    encoder = instantiate(cfg.text_encoder.encoder)(tokenizer=tokenizer)
    assert encoder.out_dim > 0


@pytest.mark.parametrize("option", options("fusion"))
def test_fusions_instantiate(make_cfg, option):
    fusion = instantiate(make_cfg(f"fusion={option}").fusion)(image_dim=8, text_dim=6)
    assert fusion.out_dim > 0


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_instantiates(make_cfg, option):
    import torch

    cfg = make_cfg(f"trainer={option}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        # Lightning refuses a GPU trainer without a GPU; check the config itself instead.
        assert cfg.trainer.devices and cfg.trainer.precision
        pytest.skip("no GPU on this machine")
    trainer = instantiate(cfg.trainer)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("option", options("logger"))
def test_loggers_instantiate(make_cfg, option):
    cfg = make_cfg(f"logger={option}")
    loggers = [instantiate(node) for node in cfg.logger.values()]
    assert loggers, option
    assert "csv" in cfg.logger, "a CSV log is always written"


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_instantiate(make_cfg, option):
    cfg = make_cfg(f"callbacks={option}")
    for node in (cfg.callbacks or {}).values():
        assert instantiate(node) is not None


def test_run_dir_names_experiment_or_strategy(make_cfg):
    cfg = make_cfg("experiment=baseline_digits")
    assert cfg.name == "baseline_digits"
    assert cfg.hydra.run.dir.startswith("outputs/baseline_digits/")
    assert make_cfg().name == "image_classifier"
    assert OmegaConf.to_container(make_cfg().hydra.sweep)["dir"].startswith("multirun/${name}")


def test_target_sets_num_classes_and_task(make_cfg):
    assert make_cfg("data.target=color_shape").data.num_classes == 24
    cfg = make_cfg("data.target=attributes")
    assert cfg.data.task == "multilabel" and cfg.strategy.task == "multilabel"


def test_wandb_tags_and_group(make_cfg):
    cfg = make_cfg("data=digits", "backbone=resnet18")
    assert list(cfg.logger.wandb.tags) == ["image_classifier", "digits", "resnet18"]
    assert cfg.logger.wandb.group == "image_classifier" and cfg.logger.wandb.job_type == "train"
    assert make_cfg("logger=wandb", config_name="eval").logger.wandb.job_type == "eval"


@pytest.mark.parametrize("flag", [["--help"], ["--cfg", "job"]])
def test_help_and_cfg_do_not_import_heavy_packages(flag, tmp_path):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['lmvision-train', *{flag!r}]\n"
        "try:\n"
        "    runpy.run_module('lmvision.train', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('pytorch_lightning', 'lightning', 'transformers', 'torch') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = run_cli(["-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    if flag == ["--help"]:
        for group in ("data:", "strategy:", "backbone:", "head:", "text_encoder:", "fusion:",
                      "trainer:", "logger:", "callbacks:", "paths:", "debug:", "experiment:"):
            assert group in result.stdout
    else:
        assert "datamodule:" in result.stdout


def test_config_dir_in_a_checkout_and_in_an_installed_wheel(tmp_path):
    import shutil

    from lmvision.config import config_dir

    assert (ROOT / "conf").samefile(config_dir())
    # a wheel carries conf/ inside the package (pyproject's force-include): found there too
    site = tmp_path / "site"
    shutil.copytree(ROOT / "src" / "lmvision", site / "lmvision")
    shutil.copytree(ROOT / "conf", site / "lmvision" / "conf")
    result = run_cli(["-c", "from lmvision.config import config_dir; print(config_dir())"],
                     cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert result.stdout.strip() == str(site / "lmvision" / "conf"), result.stderr


def test_selection_metric_drives_checkpoints_early_stopping_and_optimized_metric(make_cfg):
    cfg = make_cfg("callbacks=early_stopping", "strategy.monitor=val/loss", "strategy.monitor_mode=min")
    for callback in (cfg.callbacks.best_checkpoint, cfg.callbacks.early_stopping):
        assert (callback.monitor, callback.mode) == ("val/loss", "min")
    assert cfg.optimized_metric == "val/loss_best"
    default = make_cfg()
    assert "early_stopping" not in default.callbacks  # off unless asked for
    assert (default.callbacks.best_checkpoint.monitor, default.optimized_metric) == ("val/acc", "val/acc_best")
    assert make_cfg("experiment=tagging_shapes").callbacks.best_checkpoint.monitor == "val/f1_macro"


def test_only_classification_configs_and_code_name_val_acc():
    """A strategy that is not a classifier must not inherit a classifier's selection metric."""
    configs = {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml") if "val/acc" in p.read_text()}
    assert configs == {"strategy/image_classifier.yaml", "strategy/fusion.yaml",
                       "strategy/aux_text.yaml", "strategy/pixel_lm_finetune.yaml",
                       "hparams_search/pixel_lm_finetune.yaml"}  # (the fine-tune's search)
    src = ROOT / "src" / "lmvision"
    code = {str(p.relative_to(src)) for p in src.rglob("*.py") if "val/acc" in p.read_text()}
    assert code == {"strategies/classification.py", "strategies/fusion.py",
                    "strategies/aux_text.py", "strategies/pixel_lm_finetune.py"}  # the classifiers


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_groups_build(make_cfg, optimizer, scheduler):
    import torch

    cfg = make_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}")
    built = instantiate(cfg.strategy.optimizer).build(torch.nn.Linear(3, 2))
    assert type(built).__name__ == {"adamw": "AdamW", "sgd": "SGD"}[optimizer]
    assert built.param_groups[0]["lr"] == cfg.optimizer.lr
    if scheduler == "none":
        assert cfg.strategy.scheduler is None
        return
    schedule = instantiate(cfg.strategy.scheduler).build(built, total_steps=100)
    first = schedule.get_last_lr()[0]
    if scheduler == "warmup_cosine":  # warm-up: the first step is a small share of the peak
        assert first == pytest.approx(cfg.optimizer.lr / 5)  # 5 warm-up steps of 100
    else:
        assert first == cfg.optimizer.lr
