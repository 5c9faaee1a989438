"""Logger factories. W&B is the primary logger; it never prompts and never blocks a run."""

from __future__ import annotations

import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning import loggers as pl_loggers

from lmvision import compat
from lmvision.errors import UserError
from lmvision.ranks import is_rank_zero

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_credentials_present() -> bool:
    """True when W&B could log in without asking: an API key in the environment or ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` means: $WANDB_MODE if set, else online with credentials and offline without."""
    if mode not in WANDB_MODES:
        raise UserError(f"logger.wandb.mode must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    return "online" if wandb_credentials_present() else "offline"


def wandb_logger(
    save_dir: str,
    project: str = "lmvision",
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    job_type: str = "train",
    entity: str | None = None,
    id: str | None = None,
    init_timeout: float = 60.0,
):
    """A Lightning ``WandbLogger`` that works with and without credentials.

    Args:
        save_dir: Where W&B writes its files (the run directory).
        project: W&B project.
        mode: ``auto`` (online with credentials, offline without), ``online``, ``offline`` or
            ``disabled``.
        name: Display name of the run.
        group: Runs of one sweep or experiment share a group.
        tags: Tags shown in dashboards (strategy, data, backbone).
        job_type: ``train`` or ``eval``.
        entity: W&B team or user.
        id: Continue the W&B run with this id (a resumed run sets it from its run record).
        init_timeout: Seconds to wait for the W&B service before giving up.
    """
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    if os.environ.get("WANDB_MODE", None) == "":
        del os.environ["WANDB_MODE"]  # wandb rejects an empty mode; empty means "not set"
    mode = resolve_wandb_mode(mode)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline" and is_rank_zero():
        print(
            "W&B is offline (no credentials found); to upload this run later: "
            f"wandb sync {Path(save_dir).resolve() / 'wandb' / 'latest-run'}",
            flush=True,
        )
    settings = wandb.Settings(silent=True, console="off", init_timeout=init_timeout)
    resume = {"id": id, "resume": "allow"} if id else {}
    return WandbLogger(
        save_dir=save_dir, project=project, name=name, group=group, tags=[str(t) for t in tags],
        job_type=job_type, entity=entity, mode=mode, settings=settings, **resume,
    )


class CSVLogger(pl_loggers.CSVLogger):
    """Lightning's CSV logger, except that an existing ``metrics.csv`` is continued, not deleted.

    A run only ever logs into its own directory (lmvision refuses to start a run in another
    run's directory), so an existing file there belongs to this run, stopped and now resumed:
    its rows are kept and the new ones appended.
    """

    @property
    @rank_zero_experiment
    def experiment(self):
        """The CSV writer: :func:`lmvision.compat.continued_csv_experiment`."""
        return compat.continued_csv_experiment(self)


def finish_wandb(trainer) -> None:
    """Close the W&B run so that an offline run is complete on disk, ready for ``wandb sync``."""
    from pytorch_lightning.loggers import WandbLogger

    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
