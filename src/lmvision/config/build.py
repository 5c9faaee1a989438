"""Turn a composed config into the pieces of a run, in order: the text recipe, the datamodule
(which makes the tokenizer from its training split), the text side, then the strategy with its
network; the trainer, callbacks and loggers. Used by the run session (``lmvision.run.session``).

A network or strategy whose constructor takes ``text`` receives the run's text side
(:class:`~lmvision.text.side.TextSide`): that parameter is how a class says it reads text. A
constructor that refuses an argument (:class:`~lmvision.checks.ArgumentError`, or a plain
``ValueError`` that names the argument) becomes one :class:`UserError` naming the option the
user wrote (``strategy.net.mode``, or ``data.batch_size`` when the value comes from there).
"""

from __future__ import annotations

import copy
import inspect
import re
from contextlib import contextmanager
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf, open_dict

from lmvision.checks import ArgumentError
from lmvision.errors import UserError, user_error_in

# what a config's ``descriptions`` holds that says where or how they are computed, not what
LOGISTICS = ("cache_dir", "device", "wait_seconds", "batch_size")


def instantiate_group(node: DictConfig | None, cfg: DictConfig | None = None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a dict-like group (callbacks, loggers,
    evaluation); other entries (shared settings) are left alone. ``cfg``: the whole config
    ``node`` belongs to, so that an argument an entry refuses is named as the option the user
    wrote (``explain.saliency``, where the entry interpolates it)."""
    from hydra.utils import instantiate

    if not node:
        return []
    with user_errors(node if cfg is None else cfg):
        return [instantiate(c) for c in node.values()
                if isinstance(c, DictConfig) and "_target_" in c]


def text_recipe(cfg: DictConfig):
    """The run's :class:`~lmvision.text.side.TextRecipe` (``inputs.text``), or ``None``."""
    from hydra.utils import instantiate

    if OmegaConf.select(cfg, "inputs.text") is None:
        return None
    with user_errors(cfg):
        recipe = instantiate(untouched(cfg, "inputs.text"))
    # the encoder, tokenizer and descriptions are made later, by the network and the data:
    # an argument they refuse then is named as the option that set it
    for part in ("tokenizer", "encoder", "descriptions"):
        if getattr(recipe, part) is not None:
            setattr(recipe, part, Named(getattr(recipe, part), cfg, f"inputs.text.{part}"))
    return recipe


def datamodule(cfg: DictConfig, recipe, tokenizer: Any | None = None):
    """The datamodule, serving what ``inputs`` asks for; ``tokenizer``: a checkpoint's, used
    instead of making one from the training split."""
    from hydra.utils import instantiate

    text = recipe.data_field(tokenizer) if recipe is not None else None
    with user_errors(cfg):
        return instantiate(untouched(cfg, "data.datamodule"), text=text,
                           pixels=OmegaConf.select(cfg, "inputs.pixels") or "normalised")


def text_side(cfg: DictConfig, recipe, datamodule, descriptions: Any | None = None):
    """The text side, once the datamodule has its tokenizer; ``descriptions``: a checkpoint's,
    used instead of making them (they are made for the data's classes otherwise, and remember
    the ``descriptions`` config that made them)."""
    if recipe is None:
        return None
    if descriptions is None and recipe.descriptions is not None:
        with user_errors(cfg):
            descriptions = recipe.descriptions(list(datamodule.classes))
        descriptions.config = descriptions_config(cfg)
    return recipe.side(datamodule, descriptions)


def strategy(cfg: DictConfig, side):
    """The strategy with its network; ``side`` goes to whichever of the two takes ``text``."""
    from hydra.utils import get_class, instantiate

    given: dict[str, Any] = {}
    for path, kwargs in (("strategy.net", given.setdefault("net", {})), ("strategy", given)):
        target = OmegaConf.select(cfg, f"{path}._target_")
        takes = parameters(get_class(target), with_defaults=True) if target else {}
        if "text" not in takes:
            continue
        if side is not None:
            kwargs["text"] = side
        elif not takes["text"]:  # it cannot do without
            raise UserError(f"{path}: {target.rsplit('.', 1)[-1]} reads text, and "
                            f"inputs={chosen(cfg, 'inputs')} gives none; choose inputs= the "
                            "strategy's own (the default)")
    if not given["net"]:
        del given["net"]
    with user_errors(cfg):
        return instantiate(untouched(cfg, "strategy"), **given)


def trainer(cfg: DictConfig, callbacks: list, loggers: list, **kwargs: Any):
    """The Lightning Trainer; a setting Lightning refuses becomes a UserError naming ``trainer``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning_fabric.plugins.environments import SLURMEnvironment
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    if SLURMEnvironment.detect() and "plugins" not in cfg.trainer and "plugins" not in kwargs:
        # the environment Lightning would choose, without its requeue on SIGUSR1: a job warned
        # by SLURM is saved and requeued by lmvision and submitit (lmvision.run.preemption)
        kwargs["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, MisconfigurationException):
            raise UserError(f"trainer: {err.__cause__}") from err
        raise


class Named:
    """Calls ``make`` (a factory built from the config node at ``node``); an argument it
    refuses becomes a UserError naming the option the user wrote."""

    def __init__(self, make: Any, cfg: DictConfig, node: str) -> None:
        self.make, self.cfg, self.node = make, cfg, node

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.make(*args, **kwargs)
        except ArgumentError as err:
            message = option_message(self.cfg, self.node, err)
            if message is None:
                raise
            raise UserError(message) from err


@contextmanager
def user_errors(cfg: DictConfig) -> Iterator[None]:
    """Turn a constructor's refusal of an argument, raised while instantiating a node of
    ``cfg``, into a UserError naming the option the user wrote."""
    from hydra.errors import InstantiationException

    try:
        yield
    except InstantiationException as err:
        if user_error_in(err) is not None:
            raise
        cause, found = err.__cause__, re.search(r"full_key: (\S+)", str(err))
        if not isinstance(cause, ValueError) or not found:
            raise
        message = option_message(cfg, found.group(1), cause)
        if message is None:
            raise
        raise UserError(message) from err


def option_message(cfg: DictConfig, node: str, error: ValueError) -> str | None:
    """``error``'s message with its argument renamed to the option that set it (following an
    interpolation to its source), or ``None`` when it names no argument of the node's target."""
    from hydra.utils import get_object

    from lmvision.config.validate import source_of

    target = OmegaConf.select(cfg, f"{node}._target_")
    try:
        names = parameters(get_object(target)) if target else []
    except (ImportError, ValueError):
        names = []
    if isinstance(error, ArgumentError):
        argument = error.argument
        rest = None
    else:
        found = re.match(r"([A-Za-z_]\w*)\b\s*(=|:|must|is)", str(error))
        if not found:
            return None
        argument, rest = found.group(1), str(error)[len(found.group(1)):]
    head = argument.split(".")[0].split("[")[0]
    if head not in names:
        return None
    option = source_of(cfg, f"{node}.{head}") + argument[len(head):]
    return error.renamed(option) if rest is None else option + rest


def untouched(cfg: DictConfig, path: str) -> DictConfig:
    """The node at ``path`` of a copy of ``cfg``: Hydra resolves the interpolations of what it
    instantiates in place, which would change the run's config (what its checkpoints store and
    what messages name) where a node interpolates a whole section."""
    return OmegaConf.select(copy.deepcopy(cfg), path)


def parameters(cls: Any, with_defaults: bool = False) -> Any:
    """The names a class's (or function's) signature takes; ``with_defaults``: a dict of
    each name to whether it has a default."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {} if with_defaults else []
    if with_defaults:
        return {n: p.default is not inspect.Parameter.empty for n, p in params.items()}
    return list(params)


def chosen(cfg: DictConfig, group: str) -> str:
    """The option chosen in a config group (``inputs=fusion``), or ``?``."""
    return group_choices().get(group, "?")


def config_container(cfg: DictConfig, resolve: bool) -> dict:
    """The config as plain containers, without Hydra's own node."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=False)


def group_choices() -> dict[str, str]:
    """Which option of each config group this run uses (``{"data": "shapes", ...}``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}


def descriptions_config(cfg: DictConfig) -> dict:
    """The resolved ``descriptions`` config, without the options that only say where or how
    descriptions are computed (a cache directory, a device), not what they are."""
    config = OmegaConf.to_container(cfg.descriptions, resolve=True)
    for key in LOGISTICS:
        config.pop(key, None)
    return config
