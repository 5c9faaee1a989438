"""How the entry points end: a user's mistake is one line and exit status 2; a bug keeps its
traceback; a sweep runs every job and ends with a summary.

    lmvision: error: trainer.max_epoch: no such option; did you mean trainer.max_epochs?

A user's mistake is a :class:`~lmvision.errors.UserError` raised by lmvision on purpose, or a
config that Hydra could not compose from the command line (a typo in a key, an unknown group
option, an override it cannot parse). Anything else raised while a run is assembled or runs is
a bug and is shown with its full traceback. Only Hydra and OmegaConf are imported here.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
import traceback
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from lmvision import compat
from lmvision.errors import message_of, user_error_in

# What the run raised, kept for `main` to report once Hydra has returned. (Letting it escape
# through Hydra would make Hydra print its own "Error executing job" line first.)
_run_failures: list[BaseException] = []


def main(hydra_main: Callable[[], Any], config_name: str) -> None:
    """Call a ``@hydra.main`` function and turn user mistakes into one line and exit status 2.

    Args:
        hydra_main: The decorated entry function (it reads the command line itself).
        config_name: Its root config (``train`` or ``eval``), to suggest keys after a typo.
    """
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's errors reach us instead of its printer
    _run_failures.clear()
    try:
        hydra_main()
    except Exception as err:  # noqa: BLE001 - Hydra could not compose the run's config
        message = user_message(err, config_name)
        if message is None:
            raise
        exit_with_error(message)
    if _run_failures:
        err = _run_failures.pop()
        user = user_error_in(err)
        if user is None:
            raise err  # a bug: the full traceback
        exit_with_error(message_of(user))


def exit_with_error(message: str) -> None:
    """Print ``lmvision: error: <message>`` on stderr and exit with status 2."""
    print(f"lmvision: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def run_task(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run one job. A single run's error is kept for :func:`main` to report. In a sweep a
    failing job is reported at once and scored NaN, so that every later job still runs (the
    sweep ends with a summary: see ``hydra_callbacks.SweepSummary``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    sweeping = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if sweeping:
        environment = dict(os.environ)
        processes_join_this_job()
    try:
        return fn(cfg)
    except Exception as err:
        if not sweeping:
            _run_failures.append(err)
            return None
        user = user_error_in(err)
        if user is not None:
            print(f"lmvision: error: {message_of(user)}", file=sys.stderr, flush=True)
        else:
            traceback.print_exception(err)
        return math.nan
    finally:
        if sweeping:
            end_process_group(environment)


def processes_join_this_job() -> None:
    """Under ``-m``, Lightning starts the other DDP processes of a job (``trainer=ddp_cpu``,
    several GPUs) with this process's command line, ``-m`` and all, which would start the whole
    sweep again in each, and with Hydra's ``run.dir``, which is not the job's directory. Make
    both this job's: the command line keeps its options (``-cd``, ``-cn``...) and becomes the
    job's own overrides (a single run) and ``run.dir`` its output directory, so that those
    processes join this job. And a failing job must not end the sweep: Lightning's watcher of
    those processes kills this process too when one of them fails; here it kills only them."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    hydra_cfg = HydraConfig.get()
    options, words = [], iter(sys.argv[1:])
    for word in words:  # Hydra's flags, without -m and without the sweep's overrides
        if word in ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"):
            options += [word, next(words, "")]
        elif word.startswith(("--config-path=", "--config-name=", "--config-dir=")):
            options.append(word)
    sys.argv = [sys.argv[0], *options, *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    spare_this_process_when_a_child_fails()


def spare_this_process_when_a_child_fails() -> None:
    """Lightning's watcher of a job's DDP processes ends only them when one fails, not this
    process too (see :func:`lmvision.compat.spare_main_process_when_a_child_fails`)."""
    compat.spare_main_process_when_a_child_fails()


def end_process_group(environment: dict[str, str]) -> None:
    """After a sweep's job: let its other processes finish (or end them), close its DDP process
    group and give back the environment the job started with. Lightning leaves ``LOCAL_RANK``,
    ``WORLD_SIZE``, ``MASTER_PORT``... in it when it starts processes; the next job would read
    them as "started by a launcher" and wait for processes that never come."""
    compat.finish_child_process_observers(timeout=60)
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    for key in set(os.environ) - set(environment):
        del os.environ[key]
    for key, value in environment.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def user_message(err: BaseException, config_name: str = "train") -> str | None:
    """The one-line message for a user's mistake, or ``None`` when ``err`` is a bug."""
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )

    user = user_error_in(err)
    if user is not None:
        return message_of(user)
    if isinstance(err, MissingConfigException) and err.options is not None:
        found = re.search(r"Could not find '([^']+)/([^']+)'", str(err))
        if found:
            group, option = found.groups()
            return (f"{group}={option}: no such option; choose one of "
                    f"{', '.join(sorted(err.options))}")
    if isinstance(err, OverrideParseException):
        return f"cannot read the override {err.override!r}: {str(err).splitlines()[0]}"
    if isinstance(err, ConfigCompositionException):
        key = getattr(err.__cause__, "full_key", None)
        found = re.search(r"Could not override '([^']+)'", str(err))
        if key and found:
            return unknown_key_message(found.group(1), key, config_name)
        return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return None


def unknown_key_message(override_key: str, missing: str, config_name: str) -> str:
    """``trainer.max_epoch: no such option; did you mean trainer.max_epochs?``"""
    keys = config_keys(config_name)
    leaf = override_key.split(".")[-1]
    parent, _, name = missing.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    close = [siblings[n] for n in difflib.get_close_matches(name, list(siblings), n=2, cutoff=0.7)]
    if missing != override_key:  # a section is unknown (optim.lr): complete its suggestions
        rest = override_key[len(missing):]
        close = [k + rest for k in close if k + rest in keys]
    # the same option under another section (lr -> optimizer.lr, batch_size -> data.batch_size)
    close += [k for k in keys if k.split(".")[-1] == leaf and k not in close][:2]
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return (f"{override_key}: no such option{hint} (to add a new key, write +{override_key}=...)")


def config_keys(config_name: str) -> list[str]:
    """Every key of the default config, dotted (``trainer.max_epochs``), except those that only
    repeat another by interpolation; [] if the config cannot be composed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lmvision.config import config_dir

    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir(), version_base="1.3"):
            cfg = compose(config_name)
    except Exception:  # noqa: BLE001 - suggestions are a nicety; the error is reported anyway
        return []
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                path = f"{prefix}.{key}" if prefix else str(key)
                if not (isinstance(value, str) and value.startswith("${")):
                    keys.append(path)
                walk(value, path)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return keys
