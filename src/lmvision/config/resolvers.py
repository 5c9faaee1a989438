"""lmvision's OmegaConf resolvers (``${lmv.<name>:...}``), registered on import.

Only omegaconf is imported here, so composing a config stays fast.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from lmvision.data import catalog, spec
from lmvision.errors import UserError
from lmvision.text.hub import minilm_path


def register_resolvers() -> None:
    """Resolvers that derive data properties from a dataset's options, e.g. `num_classes`.

    `${lmv.num_classes:shapes,${.target}}` lets `data.num_classes` follow `data.target`, so a
    strategy can interpolate `${data.num_classes}` without anyone instantiating the data.
    """
    resolvers = {
        "lmv.when_positive": when_positive,
        "lmv.num_classes": spec.num_classes,
        "lmv.num_classes_in": num_classes_in,
        "lmv.task": spec.task,
        "lmv.minilm_path": minilm_path,
        "lmv.tasks_per_node": tasks_per_node,
        "lmv.gpus_per_node": gpus_per_node,
        "lmv.local_gpus": local_gpus,
        "lmv.one_task": one_task,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def num_classes_in(kind, where, classes=None, members=None, *, _root_=None):
    """``${lmv.num_classes_in:jsonl,${.path},${.classes}}``: the classes of a user's data, read
    once and then kept beside it (or under ``paths.cache_dir``), so that resolving a config
    reads no data again until it changes; see :mod:`lmvision.data.class_cache`."""
    cache_dir = OmegaConf.select(_root_, "paths.cache_dir", default=None) \
        if _root_ is not None else None
    return catalog.num_classes(kind, where, classes, members, cache_dir=cache_dir)


def when_positive(weight, value, otherwise=0):
    """``${lmv.when_positive:${..classifier_weight},${data.num_classes}}``: ``value`` when
    ``weight`` > 0, else ``otherwise`` (a head exists only when its loss is weighted)."""
    return value if float(weight) > 0 else otherwise


def tasks_per_node(devices):
    """``${lmv.tasks_per_node:${trainer.devices}}``: SLURM tasks per node, one per device, as
    Lightning's DDP under ``srun`` requires (``trainer.devices == SLURM_NTASKS_PER_NODE``)."""
    if isinstance(devices, int) and devices > 0:
        return devices
    raise UserError(f"trainer.devices={devices!r}: a cluster job needs the number of devices "
                    "per node (one task each), e.g. trainer.devices=4")


def gpus_per_node(accelerator, devices):
    """``${lmv.gpus_per_node:${trainer.accelerator},${trainer.devices}}``: GPUs to ask SLURM
    for on each node: the devices when training on GPUs, none on CPUs. ``auto`` cannot be
    decided on a login node, so it is refused."""
    if str(accelerator) in ("gpu", "cuda"):
        return tasks_per_node(devices)
    if str(accelerator) == "cpu":
        return None
    raise UserError(f"trainer.accelerator={accelerator!r}: a cluster job must say whether it "
                    "asks for GPUs: trainer=gpu or trainer=ddp (GPUs), trainer=cpu or "
                    "trainer=ddp_cpu (CPUs)")


def local_gpus(accelerator, devices):
    """``${lmv.local_gpus:${trainer.accelerator},${trainer.devices}}``: GPUs a local job may
    see: none on CPUs, else the devices (``auto``: as many of them as this machine has)."""
    if str(accelerator) == "cpu":
        return 0
    wanted = tasks_per_node(devices)
    if str(accelerator) in ("gpu", "cuda"):
        return wanted
    import torch

    return min(wanted, torch.cuda.device_count())


def one_task(devices):
    """``${lmv.one_task:${trainer.devices}}``: a local job is one process (DDP over several
    devices is for a plain ``-m`` sweep or ``hydra/launcher=slurm``)."""
    if devices in (1, "1"):
        return 1
    raise UserError(f"trainer.devices={devices!r}: hydra/launcher=local_jobs runs each job as one "
                    "process; for DDP over several devices use a plain -m sweep or "
                    "hydra/launcher=slurm")


register_resolvers()
