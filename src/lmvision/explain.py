"""Explain a classifier's decisions: per image, the predicted class and its confidence, a
caption from a captioner, and saliency maps (Captum) of the decision.

    lmvision-explain ckpt_path=<captioner run>/checkpoints/last.ckpt              # the test split
    lmvision-explain ckpt_path=<captioner>.ckpt images=photos/                    # a folder of PNGs
    lmvision-explain ckpt_path=<captioner>.ckpt classifier_path=<classifier>.ckpt images=a.png

``ckpt_path`` is a ``captioner`` checkpoint. The decision is that of its classification head
(the multi-task captioner), or of a separately trained classifier checkpoint
(``image_classifier``, ``fusion``, ``aux_text``) given as ``classifier_path``. Both are rebuilt
from the configs stored in their checkpoints. Writes to the run directory
``explanations.jsonl`` (one line per image), ``explanations.png`` (a panel sheet: image,
saliency overlay, prediction, caption), ``metrics.json`` (the faithfulness metrics of
:mod:`lmvision.evaluation.faithfulness`, on the test split) and ``run.json``; with ``logger=wandb`` also a
W&B table.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lmvision.config import config_dir
from lmvision.errors import UserError
from lmvision.run.cli import main as run_cli
from lmvision.run.cli import run_task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="explain")
def hydra_main(cfg: DictConfig) -> None:
    run_task(explain, cfg)


def main() -> None:
    """``lmvision-explain``: user mistakes are one line and exit status 2 (see lmvision.run.cli)."""
    run_cli(hydra_main, "explain")


def decision(model):
    """``(forward(images, batch) -> logits, encoder)`` of a classifier strategy or of the
    captioner's head."""
    from lmvision.strategies.captioner import CaptionerStrategy

    if isinstance(model, CaptionerStrategy):
        if model.net.head is None:
            raise UserError("this captioner has no classification head (it was trained with "
                            "strategy.net.num_classes=0): give the classifier as classifier_path=")
        return (lambda images, batch: model.classifier_forward(images)), model.net.image_encoder
    if not hasattr(model, "logits"):
        raise UserError(f"classifier_path: a {type(model).__name__} checkpoint does not classify")
    encoder = getattr(model.net, "image_encoder", None)
    return (lambda images, batch: model.logits({**batch, "image": images})), encoder


def check_same_images(classifier_data, captioner_data) -> None:
    """The classifier and the captioner must see the same classes and the same images."""
    for what, a, b in (("classes", list(classifier_data.classes), list(captioner_data.classes)),
                       ("image size", classifier_data.image_size, captioner_data.image_size),
                       ("channels", classifier_data.channels, captioner_data.channels),
                       ("normalisation", (list(classifier_data.mean), list(classifier_data.std)),
                        (list(captioner_data.mean), list(captioner_data.std)))):
        if a != b:
            raise UserError(f"classifier_path and ckpt_path were trained with different {what} "
                            f"({a} and {b})")


def folder_batches(source: Path, datamodule, batch_size: int):
    """Batches of image files (a file or every image in a folder), resized to the data's size
    and normalised as in training; names instead of labels."""
    from PIL import Image
    from torchvision.transforms import v2
    from torchvision.transforms.functional import pil_to_tensor

    files = [source] if source.is_file() else sorted(
        p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"images={source}: no image files ({', '.join(IMAGE_SUFFIXES)}) there")
    mode = "L" if datamodule.channels == 1 else "RGB"
    size = datamodule.image_size
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        images = []
        for path in chunk:
            try:
                with Image.open(path) as img:
                    pixels = pil_to_tensor(img.convert(mode))
            except OSError as err:
                raise UserError(f"images: cannot read {path} as an image ({err})") from err
            pixels = v2.functional.resize(pixels, [size, size], antialias=True)
            images.append(datamodule.eval_transform(pixels))
        yield {"image": torch.stack(images), "name": [str(p) for p in chunk]}


def test_batches(datamodule, limit: int | None):
    datamodule.setup("test")
    seen = 0
    for batch in datamodule.test_dataloader():
        keep = len(batch["image"]) if not limit else min(len(batch["image"]), limit - seen)
        batch = {k: v[:keep] for k, v in batch.items()}
        batch["name"] = [f"test[{int(i)}]" for i in batch["index"]]
        yield batch
        seen += keep
        if limit and seen >= limit:
            return


def explain(cfg: DictConfig) -> dict[str, float]:
    from lmvision.evaluation.explanations import measure_batch, train_text_classifier
    from lmvision.evaluation.faithfulness import SALIENCY_METHODS, Faithfulness, black, saliency
    from lmvision.files import write_json
    from lmvision.run.parts import load_strategy
    from lmvision.run.session import RunSession
    from lmvision.strategies.captioner import CaptionerStrategy

    with RunSession.open(cfg, "explain") as session:
        options = session.cfg.explain
        methods = list(options.saliency)
        for method in methods:
            if method not in SALIENCY_METHODS:
                raise UserError(f"explain.saliency: {method!r} is not one of "
                                f"{', '.join(SALIENCY_METHODS)}")
        datamodule, _, captioner = session.build(load_weights=True)
        if not isinstance(captioner, CaptionerStrategy):
            raise UserError(f"ckpt_path={cfg.ckpt_path}: expected a captioner checkpoint, got "
                            f"{type(captioner).__name__}")
        classifier = captioner
        if cfg.get("classifier_path"):
            classifier, classifier_data = load_strategy(session.cfg, cfg.classifier_path,
                                                        "classifier_path")
            check_same_images(classifier_data, datamodule)
            # batches come from the classifier's data: a fusion model reads its own text tokens
            datamodule = classifier_data
        forward, encoder = decision(classifier)
        if "gradcam" in methods and encoder is None:
            raise UserError("explain.saliency=gradcam needs a classifier with an image encoder")
        session.record.update(checkpoint=str(cfg.ckpt_path), classifier=cfg.get("classifier_path"),
                              images=str(cfg.images))
        source = str(cfg.images)
        on_test = source == "test"
        if not on_test and not Path(source).expanduser().exists():
            raise UserError(f"images={source}: no such file or folder (or use images=test)")
        if not on_test and getattr(classifier.net, "reads_text", False):
            raise UserError("the classifier (fusion) reads each image's side text, which image "
                            "files do not have: explain it on images=test")
        batches = (test_batches(datamodule, options.get("limit")) if on_test
                   else folder_batches(Path(source).expanduser(), datamodule, options.batch_size))
        classes = list(datamodule.classes)
        faith = Faithfulness(classes, train_text_classifier(datamodule) if on_test else None)
        rows, panels = [], []
        for batch in batches:
            images = batch["image"]
            with torch.no_grad():
                probs = forward(images, batch).softmax(1)
            confidence, predicted = probs.max(1)
            captions = captioner.captions(images)
            decide = (lambda x, batch=batch: forward(x, batch))
            maps = {m: saliency(m, decide, encoder, images, predicted, black(datamodule))
                    for m in methods}
            if "label" in batch and on_test:
                measure_batch(faith, decide, captioner.captions, encoder, batch, captions,
                              predicted, methods, black(datamodule), maps)
            for i, name in enumerate(batch["name"]):
                row = explanation_row(batch, i, name, classes, predicted, confidence, captions,
                                      maps)
                rows.append(row)
                if len(panels) < options.panels:
                    panels.append((display(images[i], datamodule), maps[methods[0]][i]
                                   if methods else None, row))
        metrics = Faithfulness.metrics(*faith.totals()) if on_test else {}
        out = session.out
        (out / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if panels:
            panel_sheet(panels, methods[0] if methods else None, out / "explanations.png")
        log_wandb_table(session.cfg, rows, panels)
        write_json(out / "metrics.json", metrics)
        session.finish(metrics, print_last=False, explained=len(rows))
    print(f"Run directory: {out.resolve()}", flush=True)
    print(f"Explained {len(rows)} images: explanations.jsonl, explanations.png", flush=True)
    if metrics:
        print("Metrics: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
    return metrics


def explanation_row(batch: dict, i: int, name: str, classes: list[str], predicted, confidence,
                    captions: list[str], maps: dict) -> dict:
    """One line of explanations.jsonl: the image, its decision, caption and saliency peaks."""
    row = {"image": name, "predicted": classes[int(predicted[i])],
           "confidence": round(float(confidence[i]), 4), "caption": captions[i]}
    if "label" in batch:
        row["label"] = classes[int(batch["label"][i])]
    for m, heat in maps.items():
        peak = int(heat[i].flatten().argmax())
        row[f"peak_{m}"] = [peak // heat.shape[-1], peak % heat.shape[-1]]
        if "mask" in batch:
            row[f"on_object_{m}"] = bool(batch["mask"][i].flatten()[peak])
    return row


def display(image: torch.Tensor, datamodule) -> torch.Tensor:
    """An image as it looks: normalisation undone, (H, W, C) in [0, 1]."""
    mean = torch.tensor(datamodule.mean).view(-1, 1, 1)
    std = torch.tensor(datamodule.std).view(-1, 1, 1)
    shown = (image.cpu() * std + mean).clamp(0, 1)
    return shown.permute(1, 2, 0).expand(-1, -1, 3) if shown.shape[0] == 1 else shown.permute(1, 2, 0)


def panel_sheet(panels: list, method: str | None, path: Path) -> None:
    """Two panels per image (the image; its saliency overlaid) with prediction and caption."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmvision.files import atomic_write

    cols = 4  # two images per row
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (image, heat, row) in enumerate(panels):
        a, b = axes[k // 2, 2 * (k % 2)], axes[k // 2, 2 * (k % 2) + 1]
        a.imshow(image.numpy(), interpolation="nearest")
        a.set_title(f"{row['predicted']} ({row['confidence']:.2f})", fontsize=8)
        b.imshow(image.numpy(), interpolation="nearest")
        if heat is not None:
            b.imshow(heat.cpu().numpy(), cmap="jet", alpha=0.5, interpolation="bilinear")
            b.set_title(method, fontsize=8)
        a.text(0, -0.05, "\n".join(textwrap.wrap(row["caption"], 34)), fontsize=7,
               transform=a.transAxes, va="top")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def log_wandb_table(cfg: DictConfig, rows: list[dict], panels: list) -> None:
    """A W&B table of the explanations when ``logger=wandb`` is chosen (offline without
    credentials, like training runs)."""
    node = OmegaConf.select(cfg, "logger.wandb")
    if node is None or not rows:
        return
    import wandb

    from lmvision.run.loggers import resolve_wandb_mode

    run = wandb.init(project=node.get("project") or "lmvision", dir=str(cfg.paths.output_dir),
                     mode=resolve_wandb_mode(node.get("mode") or "auto"), job_type="explain",
                     entity=node.get("entity"))
    columns = list(rows[0])
    table = wandb.Table(columns=["panel", *columns])
    for k, row in enumerate(rows):
        image = wandb.Image(panels[k][0].numpy()) if k < len(panels) else None
        table.add_data(image, *[json.dumps(row.get(c)) if isinstance(row.get(c), list)
                                else row.get(c) for c in columns])
    run.log({"explanations": table})
    run.finish()


if __name__ == "__main__":
    main()
