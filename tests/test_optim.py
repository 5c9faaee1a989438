"""Optimisers and schedules (lmvision.strategies.optim) and the config checks of lmvision.config.validate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmvision.errors import UserError
from lmvision.strategies.optim import SGD, AdamW, Constant, WarmupCosine, param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.embed = nn.Embedding(10, 4)
        self.attn = nn.MultiheadAttention(4, 2)
        self.fc = nn.Linear(4, 2)
        self.token = nn.Parameter(torch.zeros(1, 1, 4))  # a free parameter, like a class token
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def names(net, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in net.named_parameters() if id(p) in ids)


def test_weight_decay_only_on_layer_weights():
    net = Net()
    decay, no_decay = param_groups(net, weight_decay=0.1)
    assert names(net, decay) == ["attn.in_proj_weight", "attn.out_proj.weight", "conv.weight", "fc.weight"]
    assert names(net, no_decay) == ["attn.in_proj_bias", "attn.out_proj.bias", "conv.bias", "embed.weight",
                                    "fc.bias", "norm.bias", "norm.weight", "token"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    (everything,) = param_groups(net, weight_decay=0.1, decay_all=True)
    assert len(everything["params"]) == 12  # every trainable parameter once, frozen ones left out


def test_optimizers_build_with_their_groups():
    net = Net()
    adamw = AdamW(lr=0.01, weight_decay=0.05).build(net)
    assert isinstance(adamw, torch.optim.AdamW) and [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    sgd = SGD(lr=0.1, momentum=0.9).build(net)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]


@pytest.mark.parametrize("make,message", [
    (lambda: AdamW(lr=0), r"^lr=0: expected a number > 0$"),
    (lambda: AdamW(lr=float("nan")), r"^lr=nan: expected a number$"),
    (lambda: AdamW(betas=(0.9, 1.0)), r"^betas\[1\]=1.0: expected a number in \[0, 1\)$"),
    (lambda: AdamW(weight_decay=-1), r"^weight_decay=-1: expected a number >= 0$"),
    (lambda: SGD(momentum=0.0, nesterov=True), r"^nesterov=True: needs momentum > 0$"),
    (lambda: WarmupCosine(warmup_fraction=1.0), r"^warmup_fraction=1.0: expected a number in \[0, 1\)$"),
])
def test_bad_optimizer_settings_are_refused_at_once(make, message):
    """Refused when built, naming the argument (a run names the option: see test_errors)."""
    from lmvision.checks import ArgumentError

    with pytest.raises(ArgumentError, match=message):
        make()


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupCosine(warmup_fraction=0.1, min_lr_ratio=0.1).build(opt, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then only down
    constant = Constant().build(opt, total_steps=10)
    assert constant.get_last_lr() == [opt.param_groups[0]["initial_lr"]]


def test_validation_of_values_against_signatures():
    from typing import Literal

    from lmvision.config.validate import describe, fits

    assert fits(3, int) and not fits(1.5, int) and not fits(True, int) and fits(3, float)
    assert fits(None, int | None) and not fits("abc", int | None) and fits([1, 2], list[int])
    assert fits("32-true", Literal["32-true", "16-mixed"]) and not fits("64", Literal["32-true"])
    assert describe(int | None) == "a whole number or null"


def test_check_config_names_the_option_the_user_wrote(make_cfg):
    from lmvision.config.validate import check_config

    with pytest.raises(UserError, match=r"^data.batch_size=1.5: expected a whole number$"):
        check_config(make_cfg("data.batch_size=1.5"))
    with pytest.raises(UserError, match=r"^optimizer.lr='abc': expected a number$"):
        check_config(make_cfg("optimizer.lr=abc"))  # reached through strategy.optimizer: ${optimizer}
    with pytest.raises(UserError, match=r"^head.width: no such option of lmvision.nn.heads.LinearHead"):
        check_config(make_cfg("+head.width=3"))
    check_config(make_cfg("experiment=fusion_shapes", "trainer=ddp_cpu", "callbacks=early_stopping"))
