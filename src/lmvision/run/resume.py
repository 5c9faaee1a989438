"""Which run a command continues or reads, and with what config.

* A training run resumes (``ckpt_path`` of a run's checkpoint) only in that run's directory,
  and takes that run's config from the checkpoint: ``ckpt_path=<run>/checkpoints/last.ckpt``
  alone resumes any experiment. The command line may change only what does not change what is
  learned (:data:`MAY_CHANGE`: more epochs, loggers, callbacks, where files go...); anything else
  is refused in one line naming the option, and so is a resume whose data changed on disk
  (another data fingerprint).
* An evaluation (``lmvision-eval``, ``lmvision-explain``, ``train=false``) rebuilds what was
  trained from the sections of the stored config that define it (:data:`MODEL_SECTIONS`); the
  command line wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lmvision.errors import UserError
from lmvision.files import read_json
from lmvision.run.provenance import slurm_job
from lmvision.run.record import run_of

# Sections of the training config that define what was trained (and so what to rebuild).
MODEL_SECTIONS = ("data", "strategy", "inputs", "evaluation", "backbone", "head", "text_encoder",
                  "fusion", "descriptions", "optimizer", "scheduler", "seed")
# What a resume may change: nothing here changes what is learned (keys, or whole sections).
MAY_CHANGE = ("ckpt_path", "stop_after_epochs", "test", "name", "job_type", "optimized_metric",
              "trainer.max_epochs", "trainer.devices", "trainer.num_nodes", "trainer.accelerator",
              "trainer.strategy", "trainer.enable_progress_bar", "trainer.log_every_n_steps",
              "trainer.enable_model_summary", "trainer.default_root_dir",
              "data.num_workers", "data.datamodule.num_workers", "data.datamodule.pin_memory",
              "logger", "callbacks", "paths", "hydra", "evaluation", "explain")
# Config groups a resume may choose anew (their sections are all in MAY_CHANGE).
MAY_CHOOSE = ("logger", "callbacks", "paths", "hydra", "evaluation", "explain")


def requeued_checkpoint(run_dir: Path) -> tuple[bool, str | None]:
    """Whether this process is a requeued SLURM job continuing the run in ``run_dir`` (its
    run.json names the same SLURM job), and the checkpoint to resume from (``last.ckpt``; None
    when the job was stopped before it saved one: the run starts over in its directory)."""
    job = slurm_job()
    record = read_json(Path(run_dir) / "run.json", None) or {}
    earlier = record.get("slurm") or {}
    if job is None or earlier.get("job_id") != job["job_id"]:
        return False, None
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    return True, str(last.resolve()) if last.is_file() else None


def claim_run_dir(run_dir: Path, job_type: str, ckpt_path: str | None,
                  same_job: bool = False) -> bool:
    """Check that this run may write into ``run_dir``; True when it resumes the run there.

    Raises a UserError when the directory holds another run's record (``run.json``) and this
    run does not resume it (a training run whose ``ckpt_path`` lies inside that directory, or
    ``same_job``: the same SLURM job, requeued), and when a training run would resume a run
    somewhere else than in that run's directory.
    """
    own = run_of(ckpt_path) if job_type == "train" else None
    if own is not None and own != Path(run_dir).resolve():
        raise UserError(
            f"ckpt_path={ckpt_path}: a resume continues its run, in {own}; leave hydra.run.dir "
            "out (or set it to that directory), or start a new run from its weights with "
            f"init_from={ckpt_path}")
    record = Path(run_dir) / "run.json"
    if not record.is_file():
        return False
    if own is not None or same_job:
        return True
    status = (read_json(record) or {"status": "unreadable"}).get("status", "unknown")
    raise UserError(
        f"{Path(run_dir).resolve()} already holds a run (run.json, status {status}); lmvision "
        "never writes over another run: choose a new hydra.run.dir, or resume that run with "
        f"ckpt_path={Path(run_dir).resolve() / 'checkpoints' / 'last.ckpt'}")


def may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def resume_config(cfg: DictConfig, checkpoint: dict, overrides: list[str], ckpt_path: str
                  ) -> DictConfig:
    """The config a resume runs with: the run's own (stored in ``checkpoint``), with this
    command's overrides of what a resume may change. An override that would change what is
    learned is refused in one line naming it; one that repeats the run's value is fine."""
    stored = checkpoint.get("lmvision_config")
    if stored is None:
        raise UserError(f"ckpt_path={ckpt_path}: not an lmvision checkpoint (no stored config); "
                        f"start a new run from its weights with init_from={ckpt_path}")
    run = OmegaConf.create(stored)
    OmegaConf.set_struct(run, False)
    trained_with = checkpoint.get("lmvision_choices") or {}
    for override in parse(overrides):
        key = override.key_or_group
        if override.is_add() and may_change(key):
            continue
        if key in MAY_CHOOSE or (may_change(key) and not override.is_delete()):
            continue
        if override_is_group(override):
            if trained_with.get(key) != override.value():
                before = trained_with.get(key)
                raise refusal(ckpt_path, f"{key}={override.value()}",
                              f"the run was trained with {key}={before}" if before
                              else f"the run was trained without {key}")
            continue
        given = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        before = OmegaConf.select(run, key, default=None, throw_on_missing=False)
        if plain(given) != plain(before):
            raise refusal(ckpt_path, f"{key}={plain(given)!r}",
                          f"the run was trained with {key}={plain(before)!r}")
    for override in parse(overrides):  # what a resume may change, from this command
        key = override.key_or_group
        if may_change(key) and not override.is_delete():
            value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
            OmegaConf.update(run, key, value, merge=False, force_add=True)
    with open_dict(run):  # where this process writes: its own directory, as composed now
        run.paths = cfg.paths
        if "hydra" in cfg:
            run.hydra = cfg.hydra
    OmegaConf.set_struct(run, True)
    return run


def check_fingerprint(record: dict[str, Any], datamodule, ckpt_path: str) -> None:
    """A resume trains on the data the run started on: refuse another data fingerprint."""
    before, now = record.get("data_fingerprint"), datamodule.fingerprint
    if before and now and before != now:
        raise refusal(ckpt_path, "the data", f"the data changed since the run started (its "
                      f"fingerprint was {before}, now {now}): the rest of the run would train "
                      "on other data")


def refusal(ckpt_path: str, what: str, why: str) -> UserError:
    return UserError(f"ckpt_path={ckpt_path}: cannot resume with {what}: {why}; a resume may "
                     "change only trainer.max_epochs, stop_after_epochs, test, loggers, "
                     "callbacks, evaluation, explain and where files go (start a new run from "
                     f"its weights with init_from={ckpt_path} instead)")


def training_config(cfg: DictConfig, stored: dict, overrides: list[str]) -> DictConfig:
    """Replace the model-defining sections of ``cfg`` by those stored at training time.

    A section the user chose on the command line (``data=digits``) is kept as composed; a value
    the user set inside a section (``data.batch_size=256``) is applied on top of the stored one.
    """
    keys = [o.key_or_group for o in parse(overrides)]
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    for section in MODEL_SECTIONS:
        if section not in stored or section in keys:
            continue
        value = OmegaConf.create({section: stored[section]})[section]
        if isinstance(value, DictConfig):
            for key in keys:
                if key.startswith(section + "."):
                    given = OmegaConf.select(cfg, key, throw_on_missing=False)
                    OmegaConf.update(value, key[len(section) + 1:], given, merge=False,
                                     force_add=True)
        cfg[section] = value
    OmegaConf.set_struct(cfg, True)
    return cfg


def training_choices(trained_with: dict, overrides: list[str]) -> dict[str, str]:
    """The training run's group choices, except groups the user chose anew on the command line."""
    keys = [o.key_or_group for o in parse(overrides)]
    return {group: option for group, option in trained_with.items()
            if group in MODEL_SECTIONS + ("experiment",) and group not in keys}


def command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def write_resume_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> Path:
    """Write this restart's config and overrides beside the first ones
    (``.hydra/resume-<n>/``), once the resume is accepted."""
    from hydra.core.hydra_config import HydraConfig

    base = Path(run_dir) / ".hydra"
    n = 1
    while (base / f"resume-{n}").exists():
        n += 1
    where = base / f"resume-{n}"
    where.mkdir(parents=True)
    task = cfg.copy()
    with open_dict(task):
        task.pop("hydra", None)
    OmegaConf.save(task, where / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), where / "overrides.yaml")
    if HydraConfig.initialized():
        OmegaConf.save(OmegaConf.create({"hydra": HydraConfig.get()}), where / "hydra.yaml")
    return where


def parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def override_is_group(override) -> bool:
    """Whether an override chooses a config group's option (``data=digits``): its key is one of
    the run's config groups."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return override.key_or_group in HydraConfig.get().runtime.choices


def plain(value: Any) -> Any:
    """A config value as plain containers (for comparing)."""
    if isinstance(value, (DictConfig,)) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value
