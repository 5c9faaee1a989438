"""Composing a run's config: where `conf/` lives, the resolvers, validation, building.

Importing this package registers lmvision's resolvers; only omegaconf is imported.
"""

from __future__ import annotations

from pathlib import Path

from lmvision.config import resolvers  # noqa: F401  (registers the resolvers)


def config_dir() -> str:
    """The directory holding `train.yaml`: the checkout's `conf/`, or the copy inside a wheel."""
    package = Path(__file__).resolve().parents[1]  # src/lmvision (or site-packages/lmvision)
    for candidate in (package.parents[1] / "conf", package / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"lmvision configs not found near {package} (looked for conf/train.yaml)")
