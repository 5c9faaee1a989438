"""Figures worth looking at (confusion matrix, prediction grid) and how they reach the loggers.

Figures use matplotlib's object API (no pyplot, no display needed). ``log_figure`` saves a PNG
under ``<run dir>/figures/`` and sends the figure to W&B and TensorBoard when those log.
"""

from __future__ import annotations

from pathlib import Path

import torch


def confusion_matrix_figure(matrix: torch.Tensor, classes: list[str]):
    """Row-normalised confusion matrix (rows: true class, columns: predicted class)."""
    from matplotlib.figure import Figure

    counts = matrix.detach().float().cpu()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    k = len(classes)
    side = min(3 + 0.45 * k, 14)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(k), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 12:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def prediction_grid_figure(images: torch.Tensor, predicted: list[str], actual: list[str], cols: int = 8):
    """A grid of images titled ``predicted (true)``; wrong predictions in red."""
    titles = [f"{p}\n({a})" for p, a in zip(predicted, actual)]
    colours = ["black" if p == a else "red" for p, a in zip(predicted, actual)]
    return image_grid_figure(images, titles, cols, colours, rescale=True)


def image_grid_figure(images: torch.Tensor, titles: list[str] | None = None, cols: int = 8,
                      colours: list[str] | None = None, rescale: bool = False):
    """A grid of images (B, C, H, W) in [0, 1] (``rescale``: any range, stretched per image)."""
    from matplotlib.figure import Figure

    n = len(images)
    rows = max((n + cols - 1) // cols, 1)
    fig = Figure(figsize=(cols * 1.5, rows * (1.7 if titles else 1.5)))
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = images[i].detach().float().cpu()
        if rescale:
            img = (img - img.min()) / (img.max() - img.min()).clamp(min=1e-8)
        img = img.clamp(0, 1)  # (C, H, W)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        if titles:
            ax.set_title(titles[i], fontsize=6, color=(colours or ["black"] * n)[i])
        ax.axis("off")
    fig.tight_layout()
    return fig


def log_figure(trainer, key: str, fig) -> Path | None:
    """Save ``fig`` as PNG in the run directory and log it to W&B / TensorBoard if present."""
    if trainer is None or trainer.global_rank != 0:
        return None
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    out = Path(trainer.default_root_dir) / "figures" / (key.replace("/", "_") + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(out)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, fig, global_step=trainer.global_step)
    return out


def log_examples(trainer, key: str, rows: list[dict]) -> Path | None:
    """A table of test examples: JSON in the run directory, a W&B table with the images.

    Args:
        rows: One dict per example: its image (C, H, W) under ``_image`` (any range; rescaled
            for display), and plain values (e.g. text, label, prediction).
    """
    images = [row.pop("_image") for row in rows]
    if trainer is None or trainer.global_rank != 0 or not rows:
        return None
    import json

    from pytorch_lightning.loggers import WandbLogger

    out = Path(trainer.default_root_dir) / "figures" / (key.replace("/", "_") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            columns = ["image", *rows[0].keys()]
            data = []
            for img, row in zip(images, rows):
                img = img.detach().float().cpu()
                img = (img - img.min()) / (img.max() - img.min()).clamp(min=1e-8)
                data.append([wandb.Image(img), *row.values()])
            logger.log_table(key=key, columns=columns, data=data, step=trainer.global_step)
    return out
