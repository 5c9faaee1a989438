"""Reading checkpoints given by the user (``ckpt_path=``, ``init_from=``) with clear errors,
checking that they fit the model before Lightning touches them, and loading weights only.

* ``ckpt_path`` resumes a run (weights, optimiser, schedule, loops, random state, tokenizer)
  or, with ``train=false`` and in ``lmvision-eval``, names the checkpoint to test.
* ``init_from`` starts a *new* run from another run's network weights: all of them, or the
  sub-module named by ``init_from_prefix`` (e.g. ``image_encoder``); never the optimiser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmvision.errors import UserError

NET = "net."  # strategies keep their network under `net`: its weights are `net.<...>`


def read(path: str | Path, option: str) -> dict[str, Any]:
    """Load a checkpoint file on the CPU; one clear error if it is missing or unreadable."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise UserError(f"{option}={path}: no such checkpoint file")
    if file.stat().st_size == 0:
        raise UserError(f"{option}={path}: the file is empty, not a checkpoint")
    try:  # weights_only: no code runs while unpickling; mmap: tensors are read when used
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - whatever torch.load says, the file is not usable
        raise UserError(f"{option}={path}: not a readable checkpoint (truncated or not a PyTorch "
                        f"file: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{option}={path}: not a Lightning checkpoint (no state_dict in it)")
    return checkpoint


def restore_network(path: str | Path, option: str, strategy: str):
    """The network of the checkpoint at ``path``, built from the config stored in it and loaded
    with its weights, in eval mode; and that config (an OmegaConf ``DictConfig``).

    Args:
        path: The checkpoint.
        option: The option that names it (for messages).
        strategy: The strategy class (``_target_``) that must have written it.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import lmvision.config  # noqa: F401  (the resolvers a stored config may use)

    checkpoint = read(path, option)
    config = OmegaConf.create(checkpoint.get("lmvision_config") or {})
    written_by = OmegaConf.select(config, "strategy._target_")
    if written_by != strategy:
        raise UserError(f"{option}={path}: expected a checkpoint of {strategy.rsplit('.', 1)[-1]}, "
                        f"got one of {written_by}")
    net = instantiate(config.strategy.net)
    problems = mismatches({k[len(NET):]: v for k, v in checkpoint["state_dict"].items()
                           if k.startswith(NET)}, net.state_dict())
    if problems:
        raise UserError(f"{option}={path}: its weights do not fit its own config ({problems})")
    net.load_state_dict({k[len(NET):]: v for k, v in checkpoint["state_dict"].items()
                         if k.startswith(NET)})
    return net.eval(), config


def strategy_of(checkpoint: dict) -> str | None:
    """The strategy class (``_target_``) that wrote ``checkpoint``, when lmvision wrote it."""
    config = checkpoint.get("lmvision_config") or {}
    return (config.get("strategy") or {}).get("_target_")


def check_fits(checkpoint: dict, model: nn.Module, path: str | Path, option: str,
               strategy: str | None, choices: dict | None = None) -> None:
    """Refuse a checkpoint of another strategy, or whose weights do not fit ``model``."""
    written_by = strategy_of(checkpoint)
    if written_by is not None and strategy is not None and written_by != strategy:
        name = (checkpoint.get("lmvision_choices") or {}).get("strategy", written_by)
        here = (choices or {}).get("strategy", strategy)
        raise UserError(f"{option}={path}: a checkpoint of strategy {name!r}, but this run's "
                        f"strategy is {here!r}; add strategy={name} or choose another checkpoint")
    problems = mismatches(checkpoint["state_dict"], model.state_dict())
    if problems:
        trained = checkpoint.get("lmvision_choices") or {}
        hint = ", ".join(f"{k}={v}" for k, v in trained.items() if k in ("data", "backbone", "head",
                                                                         "text_encoder", "fusion"))
        raise UserError(f"{option}={path}: its weights do not fit this model ({problems})"
                        + (f"; it was trained with {hint}" if hint else ""))


def mismatches(stored: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """A short description of missing, unexpected and mis-shaped keys ('' when they agree)."""
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    shapes = [f"{k} {tuple(stored[k].shape)} vs {tuple(expected[k].shape)}"
              for k in expected if k in stored and stored[k].shape != expected[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}")
    return "; ".join(parts)


def load_weights(net: nn.Module, checkpoint: dict, path: str | Path,
                 prefix: str | None = None) -> dict[str, Any]:
    """Copy the network weights of ``checkpoint`` (under ``prefix``, if given) into ``net``.

    Returns a report for the run record: what was loaded, what stayed at its initial value
    (``missing``) and what the checkpoint had that this network has no place for (``unused``).
    Raises a UserError when a shape disagrees or nothing at all would be loaded.
    """
    option = "init_from"
    head = NET + (prefix.strip(".") + "." if prefix else "")
    stored = {k[len(NET):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(head)}
    target = net.state_dict()
    if prefix:
        own = prefix.strip(".") + "."
        if not any(k.startswith(own) for k in target):
            raise UserError(f"init_from_prefix={prefix!r}: this network has no such sub-module; "
                            f"its sub-modules are {', '.join(sorted(_children(net)))}")
        target = {k: v for k, v in target.items() if k.startswith(own)}
    if not stored:
        available = sorted({k[len(NET):].split(".")[0] for k in checkpoint["state_dict"]
                            if k.startswith(NET)})
        raise UserError(f"{option}={path}: no weights under {head[:-1]!r} in it "
                        f"(it has: {', '.join(available) or 'no network weights'})")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in stored.items()
           if k in target and v.shape != target[k].shape]
    if bad:
        raise UserError(f"{option}={path}: {len(bad)} weights do not fit this network "
                        f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); load a part "
                        f"with init_from_prefix= one of {', '.join(sorted(_children(net)))}")
    loadable = {k: v for k, v in stored.items() if k in target}
    if not loadable:
        raise UserError(f"{option}={path}: none of its {len(stored)} weights under {head[:-1]!r} "
                        "has a place in this network")
    net.load_state_dict(loadable, strict=False)
    return {"checkpoint": str(Path(str(path)).expanduser().resolve()), "prefix": prefix,
            "loaded": len(loadable),
            "missing": sorted(k for k in target if k not in loadable),
            "unused": sorted(k for k in stored if k not in target)}


def describe_loaded(report: dict[str, Any]) -> str:
    """One line about what :func:`load_weights` did, for the run's output."""
    where = "net" + (f".{report['prefix']}" if report["prefix"] else "")
    return (f"init_from={report['checkpoint']}: loaded {report['loaded']} tensors into {where}; "
            f"{len(report['missing'])} kept their initial values, {len(report['unused'])} in the "
            "checkpoint unused")


def _children(net: nn.Module) -> list[str]:
    return [name for name, _ in net.named_children()]
