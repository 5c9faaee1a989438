"""Strategy `pixel_lm`: a language model of pixels (Image GPT), probed, fine-tuned and sampled.

Images (raw pixels in [0, 1]: the datamodule serves them without normalisation) become palette
tokens (``lmvision.nn.palette``, fitted on training pixels when training starts); a GPT
(``lmvision.nn.pixel_gpt``) learns them autoregressively, optionally after a class token and/or
caption tokens.

* ``stage=pretrain``: next-token cross-entropy, logged as ``bits_per_dim`` (bits per pixel
  token); ``val/bits_per_dim`` selects the best checkpoint. Testing (at the end of training and
  in ``lmvision-eval``) adds a linear probe: logistic regression on the mean-pooled output of
  every block (``probe/acc_layer_<i>``; ``probe/best_layer`` is chosen by cross-validation
  over train and val, and ``probe/acc_best`` is its test accuracy) and on every block's
  output side by side (``probe/acc_all_layers``), beside the same probe on raw pixels
  (``probe/acc_pixels``) and on the same architecture with random weights
  (``probe/acc_random_init``, ``probe/acc_random_init_all_layers``), with the cross-validated
  accuracies of the chosen probes (``probe/cv_acc_*``: they compare settings without reading
  the test split); ``lmvision.evaluation.probes`` has the protocol.
* ``stage=finetune``: a linear head on the mean-pooled last block, cross-entropy plus the
  generative loss times ``generative_weight`` (as iGPT), usually from a pretrained run's weights
  (``init_from=``); reports the classifier metrics and selects by validation accuracy (the
  monitor that conf/strategy/pixel_lm.yaml sets for this stage).

At each validation epoch it draws completions of validation images from their top half and
unconditional, class- and caption-conditioned samples (as the model allows), saved as PNG under
``figures/`` and sent to W&B. ``guidance`` > 1 samples the conditional ones with
classifier-free guidance (the model has learned "no condition" too, from ``condition_dropout``).
With ``gen_classifier=<an image_classifier checkpoint>`` testing
scores conditional generation: ``gen/acc`` is the share of class-conditioned samples that the
classifier assigns to the requested class, ``gen/acc_caption`` the same for caption-conditioned
samples (the class of the item whose caption was given).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from lmvision.errors import UserError
from lmvision.nn.pixel_lm import PixelLM
from lmvision.strategies.base import Strategy
from lmvision.evaluation.figures import image_grid_figure
from lmvision.evaluation.metrics import SplitMetrics

STAGES = ("pretrain", "finetune")
RANDOM_INIT_SEED = 1234  # weights of the random-init probe control


class PixelLMStrategy(Strategy):
    """Trains a :class:`PixelLM`.

    Args:
        net: The pixel language model.
        num_classes: Classes of the data (probe, fine-tuning, class conditioning).
        stage: ``pretrain`` or ``finetune``.
        tokenizer: The caption tokenizer (the entry point builds it; used with caption
            conditioning).
        generative_weight: Weight of the generative loss when fine-tuning.
        condition_dropout: Share of training examples whose class token (and, independently,
            caption) is replaced by "no condition", so that one model also samples without it.
        augment: Keep the data's training augmentation, which must then only move pixels
            (geometric, nearest-neighbour: no new colours); ``False`` trains on the images as
            they are.
        palette_images: Training images whose pixels fit the palette.
        palette_seed: Seed of the palette's k-means.
        probe: Run the linear probe when testing (``pretrain`` only).
        probe_max_train: Training images the probe learns from, at most.
        samples: Images per sample grid (0: no grids).
        sample_every_n_epochs: Draw the grids every this many validation epochs (and always at
            the last epoch).
        temperature, top_k, top_p: Sampling settings of the grids and of ``gen/acc``.
        guidance: Classifier-free guidance weight of conditional samples (grids per class and
            per caption, ``gen/acc``): 1 samples from the conditional model alone, more leans
            further towards the condition (see :meth:`PixelGPT.generate`).
        compile_sampling: Sample through the cached step compiled by ``torch.compile``
            (fewer, fused kernels: faster sampling after a compilation of seconds to a minute
            per batch size; see the pixel_lm speed study).
        gen_classifier: Path of a trained ``image_classifier`` checkpoint that scores
            conditional samples when testing (``None``: no ``gen/acc``).
        gen_samples_per_class: Class-conditioned samples per class for ``gen/acc``.
        optimizer, scheduler, monitor, monitor_mode: As in :class:`Strategy`.
    """

    def __init__(self, net: PixelLM, num_classes: int, stage: str = "pretrain", tokenizer=None,
                 generative_weight: float = 0.5, condition_dropout: float = 0.2,
                 augment: bool = False, palette_images: int = 2000, palette_seed: int = 0, probe: bool = True,
                 probe_max_train: int = 5000, samples: int = 16, sample_every_n_epochs: int = 1,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 guidance: float = 1.0, compile_sampling: bool = False,
                 gen_classifier: str | None = None, gen_samples_per_class: int = 8,
                 optimizer=None, scheduler=None, monitor: str = "val/bits_per_dim",
                 monitor_mode: str = "min") -> None:
        super().__init__(net, optimizer, scheduler, monitor, monitor_mode)
        if stage not in STAGES:
            raise UserError(f"strategy.stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if (stage == "finetune") != (net.head is not None):
            raise UserError("strategy.net.classify must be true exactly when strategy.stage=finetune")
        if not 0.0 <= condition_dropout < 1.0:
            raise UserError(f"strategy.condition_dropout must be in [0, 1), got {condition_dropout}")
        if guidance < 0 or (guidance != 1.0 and not net.conditions):
            raise UserError(f"strategy.guidance={guidance}: guidance must be >= 0, and other than 1 "
                            f"only for a model with conditions (strategy.net.conditions)")
        if "caption" in net.conditions and tokenizer is None:
            raise UserError("caption conditioning needs a tokenizer (text_encoder.tokenizer)")
        self.num_classes, self.stage, self.tokenizer = num_classes, stage, tokenizer
        self.generative_weight, self.condition_dropout = generative_weight, condition_dropout
        self.palette_images, self.palette_seed = palette_images, palette_seed
        self.probe, self.probe_max_train = probe and stage == "pretrain", probe_max_train
        self.samples, self.sample_every_n_epochs = samples, max(1, sample_every_n_epochs)
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                         "compile_step": bool(compile_sampling)}
        self.guidance = guidance
        self.gen_classifier, self.gen_samples_per_class = gen_classifier, gen_samples_per_class
        self.raw_pixels = True  # the datamodule serves pixels in [0, 1], unnormalised
        self.augment_pixels = bool(augment)  # ... with its geometric augmentation, or none
        self.text_keys = ("caption",) if "caption" in net.conditions else ()
        self.metrics = SplitMetrics("multiclass", num_classes) if stage == "finetune" else None
        self._judge: list = []  # the gen/acc classifier, kept out of the module tree
        self._shown: dict[str, torch.Tensor] | None = None

    # -- set-up -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule.image_size * datamodule.image_size != self.net.gpt.num_pixels:
            raise UserError(f"strategy.net.image_size must equal data.image_size "
                            f"({datamodule.image_size})")
        if stage == "fit" and not bool(self.net.palette.fitted):
            self.net.palette.fit(datamodule.train_images(self.palette_images), self.palette_seed)
        if self.gen_classifier and not self._judge:
            self._judge.append(load_judge(self.gen_classifier, datamodule, self.num_classes))

    # -- conditioning -------------------------------------------------------------------------
    def condition(self, batch: dict, train: bool, use: bool = True) -> torch.Tensor:
        """The prefix of a batch: its class and caption (each dropped for a share of training
        examples), or "no condition" everywhere when ``use`` is False."""
        gpt, n, device = self.net.gpt, len(batch["image"]), batch["image"].device
        if not use:
            return self.null_prefix(n, device)
        labels = captions = None
        if gpt.num_classes:
            labels = batch["label"].clone()
            if train and self.condition_dropout:
                labels[torch.rand(n, device=device) < self.condition_dropout] = -1
        if gpt.caption_tokens:
            captions = self.null_captions(n, device)
            ids = batch["caption_ids"][:, :gpt.caption_tokens]
            mask = batch["caption_mask"][:, :gpt.caption_tokens].bool()
            captions[:, :ids.shape[1]] = torch.where(mask, ids, captions[:, :ids.shape[1]])
            if train and self.condition_dropout:
                drop = torch.rand(n, device=device) < self.condition_dropout
                captions[drop] = self.null_captions(int(drop.sum()), device)
        return gpt.prefix(labels, captions, batch=n, device=device)

    def null_prefix(self, n: int, device) -> torch.Tensor:
        """The prefix of ``n`` sequences with no condition: no class, an all-padding caption."""
        return self.class_prefix(torch.full((n,), -1, dtype=torch.long, device=device))

    def class_prefix(self, labels: torch.Tensor) -> torch.Tensor:
        """The prefix asking for each of ``labels`` (``-1``: no class) and no caption."""
        gpt, n = self.net.gpt, len(labels)
        captions = self.null_captions(n, labels.device) if gpt.caption_tokens else None
        return gpt.prefix(labels, captions, batch=n, device=labels.device)

    def caption_prefix(self, batch: dict) -> torch.Tensor:
        """The prefix of a batch's captions alone (its labels hidden)."""
        return self.condition({**batch, "label": torch.full_like(batch["label"], -1)}, train=False)

    def guided(self, n: int, device) -> dict:
        """The guidance settings of ``n`` conditional samples: the weight and the prefix of
        "no condition" that it weighs against."""
        if self.guidance == 1.0:
            return {}
        return {"guidance": self.guidance, "null_prefix": self.null_prefix(n, device)}

    def null_captions(self, n: int, device) -> torch.Tensor:
        pad = getattr(self.tokenizer, "pad_token_id", None) or 0
        return torch.full((n, self.net.gpt.caption_tokens), pad, dtype=torch.long, device=device)

    # -- loss ---------------------------------------------------------------------------------
    def step(self, batch: dict, split: str) -> dict[str, torch.Tensor]:
        tokens = self.net.palette.encode(batch["image"])  # (B, N)
        finetune = self.stage == "finetune"
        # a fine-tuned classifier never reads the label (or its caption) as a prefix
        prefix = self.condition(batch, train=split == "train", use=not finetune)
        out = self.net.gpt.pixel_logits(prefix, tokens, hidden=finetune)
        logits, states = out if finetune else (out, None)
        generative = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
        losses = {"generative": generative, "bits_per_dim": generative.detach() / math.log(2)}
        if not finetune:
            return {"loss": generative, **losses}
        scores = self.net.head(states[-1].mean(1))  # (B, K)
        classification = F.cross_entropy(scores, batch["label"])
        self.metrics[split].update(scores.detach(), batch["label"])
        return {"loss": classification + self.generative_weight * generative,
                "classification": classification, **losses}

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        return self.metrics.compute(split) if self.metrics is not None else {}

    def validation_metrics(self) -> list[str]:
        names = ["val/loss", "val/generative", "val/bits_per_dim"]
        if self.metrics is not None:
            names += ["val/classification", *self.metrics["val"].keys()]
        return names

    # -- samples ------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if self._shown is None and self.samples:
            keep = {k: batch[k][:self.samples] for k in ("image", "label", "caption_ids",
                                                         "caption_mask") if k in batch}
            keep["caption"] = batch.get("caption", [""] * len(batch["image"]))[:self.samples]
            self._shown = keep

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        shown, self._shown = self._shown, None
        last = bool(self.trainer.max_epochs) and self.current_epoch + 1 >= self.trainer.max_epochs
        due = last or (self.current_epoch + 1) % self.sample_every_n_epochs == 0
        if (shown is None or self.trainer.sanity_checking or not due
                or self.trainer.global_rank != 0):
            return
        for key, (images, titles) in self.draw(shown).items():
            self.log_figure(f"samples/{key}", image_grid_figure(images, titles))

    @torch.no_grad()
    def draw(self, shown: dict, seed: int | None = None) -> dict[str, tuple[torch.Tensor, list]]:
        """Sample grids: completions of ``shown`` images from their top half, and samples
        without a condition, per class and per caption (as the model allows)."""
        was_training = self.net.training
        self.net.eval()
        gpt, size = self.net.gpt, self.net.image_size
        device, n = shown["image"].device, len(shown["image"])
        generator = torch.Generator(device="cpu").manual_seed(
            self.current_epoch if seed is None else seed)
        settings = {**self.sampling, "generator": generator}

        def images(tokens):
            return self.net.palette.decode(tokens, size)

        tokens = self.net.palette.encode(shown["image"])
        half = (size // 2) * size
        null = self.null_prefix(n, device)
        grids = {"completion": (torch.cat([images(tokens), images(gpt.generate(
            null, known=tokens[:, :half], **settings))]), ["original"] * n + ["completed"] * n),
                 "unconditional": (images(gpt.generate(null, **settings)), None)}
        if gpt.num_classes:
            labels = torch.arange(min(self.num_classes, self.samples), device=device)
            prefix = self.class_prefix(labels)
            names = self.class_names()
            grids["class"] = (images(gpt.generate(prefix, **settings,
                                                  **self.guided(len(labels), device))),
                              [names[i] for i in labels.tolist()])
        if gpt.caption_tokens:
            prefix = self.caption_prefix(shown)
            grids["caption"] = (images(gpt.generate(prefix, **settings,
                                                    **self.guided(n, device))),
                                [c[:40] for c in shown["caption"]])
        self.net.train(was_training)
        return grids

    # -- testing: probe and scored generation -------------------------------------------------
    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        values: dict[str, float] = {}
        if self.probe:
            values.update(self.linear_probe())
        if self._judge:
            values.update(self.generation_accuracy())
        if values:  # every process computes the same values: nothing to reduce
            self.log_dict({k: float(v) for k, v in values.items()})

    @torch.no_grad()
    def linear_probe(self) -> dict[str, float]:
        """Per-block logistic-regression probes, the raw-pixel probe and the random-init probe."""
        from lmvision.evaluation.probes import fit_probes

        datamodule = self.trainer.datamodule
        datamodule.setup("test")
        # the probe reads the training images as they are, never augmented
        splits = {"train": datamodule.unaugmented("train"), "val": datamodule.data_val,
                  "test": datamodule.data_test}
        # a run that tests only some batches (debug=fdr|limit) probes as many items per split
        tested = sum(self.trainer.num_test_batches) * datamodule.eval_batch_size
        budget = tested if tested < len(datamodule.data_test) else None
        random_init = copy.deepcopy(self.net)
        random_init.gpt.reset_parameters(RANDOM_INIT_SEED)
        features = {name: {"trained": [], "random": [], "pixels": [], "labels": []}
                    for name in splits}
        was_training = self.net.training
        self.net.eval()
        random_init.eval()
        for name, data in splits.items():
            limit = self.probe_max_train if name == "train" else len(data)
            limit = min(limit, budget or limit)
            for start in range(0, min(limit, len(data)), 256):
                items = [data[i] for i in range(start, min(start + 256, limit, len(data)))]
                images = torch.stack([it["image"] for it in items]).to(self.device)
                store = features[name]
                store["trained"].append(torch.stack(self.net.features(images)).cpu())
                store["random"].append(torch.stack(random_init.features(images)).cpu())
                store["pixels"].append(images.flatten(1).unsqueeze(0).cpu())
                store["labels"].append(torch.as_tensor([int(it["label"]) for it in items]))
        self.net.train(was_training)
        merged = {name: {k: torch.cat(v, dim=0 if k == "labels" else 1) for k, v in store.items()}
                  for name, store in features.items()}
        return fit_probes(merged)

    @torch.no_grad()
    def generation_accuracy(self) -> dict[str, float]:
        """Share of conditional samples that the judge classifier assigns to the asked class."""
        judge, normalise = self._judge[0]
        judge.to(self.device).eval()
        gpt, size, device = self.net.gpt, self.net.image_size, self.device
        generator = torch.Generator(device="cpu").manual_seed(0)
        settings = {**self.sampling, "generator": generator}
        was_training = self.net.training
        self.net.eval()
        out = {}
        if gpt.num_classes:
            labels = torch.arange(self.num_classes, device=device).repeat_interleave(
                self.gen_samples_per_class)
            prefix = self.class_prefix(labels)
            drawn = self.net.palette.decode(
                gpt.generate(prefix, **settings, **self.guided(len(labels), device)), size)
            out["gen/acc"] = (judge({"image": normalise(drawn)}).argmax(1) == labels).float().mean()
        if gpt.caption_tokens:
            data = self.trainer.datamodule.data_test
            count = min(len(data), self.num_classes * self.gen_samples_per_class)
            batch = self.trainer.datamodule.collate([data[i] for i in range(count)])
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            prefix = self.caption_prefix(batch)
            drawn = self.net.palette.decode(
                gpt.generate(prefix, **settings, **self.guided(count, device)), size)
            hits = judge({"image": normalise(drawn)}).argmax(1) == batch["label"]
            out["gen/acc_caption"] = hits.float().mean()
        self.net.train(was_training)
        return out


def load_judge(path: str, datamodule, num_classes: int):
    """The network of an ``image_classifier`` checkpoint and the normalisation it was trained
    with, checked against this run's data (classes, image size, channels)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lmvision.run.checkpoints import read

    checkpoint = read(path, "strategy.gen_classifier")
    config = OmegaConf.create(checkpoint.get("lmvision_config") or {})
    target = OmegaConf.select(config, "strategy._target_")
    if target != "lmvision.strategies.classification.ClassificationStrategy":
        raise UserError(f"strategy.gen_classifier={path}: expected an image_classifier checkpoint, "
                        f"got one of {target}")
    for option, mine in (("data.num_classes", num_classes),
                         ("data.image_size", datamodule.image_size),
                         ("data.channels", datamodule.channels)):
        if OmegaConf.select(config, option) != mine:
            raise UserError(f"strategy.gen_classifier={path}: it was trained with {option}="
                            f"{OmegaConf.select(config, option)}, this run has {mine}")
    net = instantiate(config.strategy.net)
    net.load_state_dict({k[4:]: v for k, v in checkpoint["state_dict"].items()
                         if k.startswith("net.")})
    mean = OmegaConf.select(config, "data.datamodule.mean") or [0.5] * datamodule.channels
    std = OmegaConf.select(config, "data.datamodule.std") or [0.5] * datamodule.channels

    def normalise(images: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(list(mean), device=images.device).view(1, -1, 1, 1)
        s = torch.tensor(list(std), device=images.device).view(1, -1, 1, 1)
        return (images - m) / s

    return net, normalise
