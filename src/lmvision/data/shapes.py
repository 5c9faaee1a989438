"""`shapes`: coloured geometric shapes rendered in code, with captions and side text.

Design of the two modalities (why fusion can beat either one alone)
-------------------------------------------------------------------
Every image shows one shape (circle, square, triangle, cross) of one colour (red, orange,
green, teal, blue, purple), small or large, in one of five positions, on a dark background
with sensor noise (``noise=0``: clean images, which a model of pixel values learns faster).
Each item carries two strings:

* ``caption`` describes what is in the picture (shape, colour, size, position) in one of many
  phrasings; it is a *target* for captioning, never an input to a classifier.
* ``text`` is *side information known at prediction time*, like a note written next to a photo.

The image and the side text are built to be complementary:

* The **image** shows the shape exactly, but the colour only up to a pair: red and orange are
  drawn from the same hue band, so are green/teal and blue/purple. From pixels alone the
  colour is a coin flip within its pair.
* The **text** names the colour exactly, but the shape only up to a family of two
  ("a circle or a square", "a triangle or a cross").

So with ``target="color_shape"`` (24 classes) and ``colors="paired"`` (the default) an image-only model reaches about 50% accuracy,
a text-only model about 50%, and a model that fuses both can reach 100%.
``target="shape"`` (the default) is solvable from the image alone, ``target="color"`` from the
text alone, and ``target="attributes"`` is multi-label tagging of shape, colour, size and
position. ``colors="distinct"`` draws every colour in its own, visually separable hue band
instead, so that the image alone determines colour and shape (the zero-shot experiments of
``aux_text`` use it). Everything is deterministic given ``seed``; the rendered set is cached on
disk per (version, num_images, image_size, colors, seed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from lmvision.data import spec
from lmvision.data.in_memory import InMemoryDataset
from lmvision.data.shapes_text import CAPTION_TEMPLATES, caption, side_text
from lmvision import checks
from lmvision.files import atomic_write

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when rendering changes: it invalidates caches

# Hue band (degrees) shown in the image for each colour pair; both names of a pair share it.
_PAIR_HUES = {"red": (0.0, 28.0), "green": (115.0, 160.0), "blue": (215.0, 265.0)}
_PAIRED_BANDS = {c: _PAIR_HUES[pair[0]] for pair in spec.COLOR_PAIRS for c in pair}
# colors="distinct": one band per colour, at least 18 degrees from its neighbours
_DISTINCT_BANDS = {"red": (-8.0, 8.0), "orange": (26.0, 38.0), "green": (100.0, 130.0),
                   "teal": (168.0, 186.0), "blue": (218.0, 240.0), "purple": (272.0, 295.0)}
_COLOR_BANDS = {"paired": _PAIRED_BANDS, "distinct": _DISTINCT_BANDS}


class ShapesDataset(InMemoryDataset):
    """Shapes rendered in code; items are dicts with ``image``, ``label``, ``caption``, ``text``.

    Args:
        num_images: How many images to render.
        image_size: Side of the square images in pixels (at least 16).
        target: Which label to return: ``shape``, ``color``, ``color_shape`` or ``attributes``
            (a multi-hot vector over shapes, colours, sizes and positions).
        seed: Seed of the generator; the same seed gives the same images and strings.
        colors: ``paired`` (colours of a pair share a hue band: the image shows the colour only
            up to its pair) or ``distinct`` (every colour has its own hue band).
        num_captions: Reference captions per image (distinct phrasings, as COCO has five): the
            item's ``references``; ``caption`` is the first of them.
        noise: Amplitude of the per-pixel sensor noise, in 8-bit levels (uniform integers in
            ``[-noise, noise]``); 0 renders clean images.
        cache_dir: Where rendered sets are cached (``None`` disables the cache).
    """

    def __init__(
        self,
        num_images: int = 6000,
        image_size: int = 32,
        target: str = "shape",
        seed: int = 0,
        colors: str = "paired",
        noise: int = 12,
        num_captions: int = 5,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        checks.whole_number("num_images", num_images)
        checks.whole_number("image_size", image_size, minimum=16)
        self.classes = spec.shapes_classes(target)  # validates target with a clear message
        self.colors = checks.choice("colors", colors, spec.SHAPES_COLORINGS)
        self.noise = checks.whole_number("noise", noise, minimum=0, maximum=127)  # 8-bit levels
        self.num_captions = checks.whole_number("num_captions", num_captions,
                                                maximum=len(CAPTION_TEMPLATES))
        # classes that combine attributes: a holdout of classes keeps every part seen
        self.class_parts = spec.shapes_class_parts(target)
        self.num_images = int(num_images)
        self.image_size = int(image_size)
        self.target = target
        self.seed = int(seed)
        self.channels = 3
        self.task = spec.task("shapes", target)
        arrays, strings = self._load_or_render(cache_dir)
        self.images = torch.from_numpy(arrays["images"])  # (N, 3, H, W) uint8
        self.attributes = {k: arrays[k] for k in ("shape", "color", "size", "position")}
        self.masks = torch.from_numpy(arrays["mask"])  # (N, H, W) bool: the object's pixels
        self.captions: list[str] = strings["captions"]
        self.references: list[list[str]] = strings["references"]
        self.texts: list[str] = strings["texts"]
        self.labels = self._labels()

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item["references"] = self.references[index]
        item["mask"] = self.masks[index]
        return item

    @property
    def fingerprint(self) -> str:
        """Content hash of the rendered set (images and strings), recorded in run.json."""
        h = hashlib.sha256(self.images.numpy().tobytes())
        h.update("\n".join(self.captions + self.texts).encode())
        h.update("\n".join("\t".join(r) for r in self.references).encode())
        h.update(self.target.encode())
        return h.hexdigest()[:16]


    # -- labels -------------------------------------------------------------------------
    def _labels(self) -> torch.Tensor:
        a = self.attributes
        if self.target == "shape":
            return torch.from_numpy(a["shape"]).long()
        if self.target == "color":
            return torch.from_numpy(a["color"]).long()
        if self.target == "color_shape":
            return torch.from_numpy(a["color"] * len(spec.SHAPES) + a["shape"]).long()
        offsets = np.cumsum([0, len(spec.SHAPES), len(spec.COLORS), len(spec.SIZES)])
        hot = np.zeros((self.num_images, len(self.classes)), dtype=np.float32)
        rows = np.arange(self.num_images)
        for offset, key in zip(offsets, ("shape", "color", "size", "position")):
            hot[rows, offset + a[key]] = 1.0
        return torch.from_numpy(hot)

    # -- cache --------------------------------------------------------------------------
    def _cache_key(self) -> str:
        raw = (f"v{GENERATOR_VERSION}-n{self.num_images}-s{self.image_size}-seed{self.seed}"
               f"-{self.colors}-noise{self.noise}-refs{self.num_captions}")
        return "shapes-" + hashlib.sha256(raw.encode()).hexdigest()[:12]

    def _render(self) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        return render_shapes(self.num_images, self.image_size, self.seed, self.colors, self.noise,
                             self.num_captions)

    def _load_or_render(self, cache_dir) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        if cache_dir is None:
            return self._render()
        base = Path(cache_dir).expanduser() / self._cache_key()
        npz, js = base.with_suffix(".npz"), base.with_suffix(".json")
        if npz.is_file() and js.is_file():
            try:
                with np.load(npz) as f:
                    arrays = {k: f[k] for k in f.files}
                strings = json.loads(js.read_text())
                if len(strings["captions"]) == self.num_images:
                    return arrays, strings
            except (OSError, ValueError, KeyError) as err:  # a broken cache is re-rendered
                log.warning("shapes cache %s is unreadable (%s); rendering again", npz, err)
        arrays, strings = self._render()
        # atomic: ranks and parallel jobs that render the same set never read half a file
        atomic_write(npz, lambda p: np.savez(p, **arrays))
        atomic_write(js, lambda p: Path(p).write_text(json.dumps(strings)))
        return arrays, strings


# ------------------------------------------------------------------------------------------
# Rendering: everything is vectorised over the whole set (no Python loop per pixel or image).
# ------------------------------------------------------------------------------------------
def render_shapes(num_images: int, image_size: int, seed: int, colors: str = "paired",
                  noise: int = 12, num_captions: int = 1):
    """Render ``num_images`` images and their strings; returns ``(arrays, strings)``."""
    rng = np.random.default_rng(seed)
    n, s = num_images, image_size
    shape = rng.integers(0, len(spec.SHAPES), n)
    color = rng.integers(0, len(spec.COLORS), n)
    size = rng.integers(0, len(spec.SIZES), n)
    position = rng.integers(0, len(spec.POSITIONS), n)

    scale = s / 32.0
    radius = np.where(size == 0, rng.uniform(4.0, 6.0, n), rng.uniform(8.5, 11.0, n)) * scale
    cx, cy = _centres(position, radius, s, rng)

    mask = _shape_masks(shape, cx, cy, radius, s)  # (N, H, W) bool
    rgb = _colours(color, rng, _COLOR_BANDS[colors])  # (N, 3) in [0, 1]
    background = rng.uniform(0.0, 0.25, n).astype(np.float32)
    img = np.empty((n, 3, s, s), dtype=np.float32)
    img[:] = background[:, None, None, None]
    np.copyto(img, rgb[:, :, None, None].astype(np.float32), where=mask[:, None])
    img *= 255.0
    # sensor noise, drawn as small integers: as good as Gaussian here and several times faster
    img += rng.integers(-noise, noise + 1, img.shape, dtype=np.int8)
    np.clip(img, 0.0, 255.0, out=img)
    images = img.astype(np.uint8)  # (N, 3, H, W)

    attributes = list(zip(shape, color, size, position))
    firsts = [caption(rng, *a) for a in attributes]
    strings = {
        "captions": [text for text, _ in firsts],
        "texts": [side_text(rng, sh, co) for sh, co in zip(shape, color)],
    }
    # further phrasings from their own stream: the images and first captions stay as they were
    more = np.random.default_rng([seed, 1])
    single = [[text] for text in strings["captions"]]
    strings["references"] = single if num_captions == 1 else [
        [text] + [caption(more, *a, template=int(t))[0] for t in
                  more.permutation([t for t in range(len(CAPTION_TEMPLATES)) if t != first])
                  [:num_captions - 1]]
        for (text, first), a in zip(firsts, attributes)]
    arrays = {"images": images, "shape": shape, "color": color, "size": size,
              "position": position, "mask": mask}
    return arrays, strings


def _centres(position, radius, s, rng):
    """Centre of each shape inside its named region, keeping the shape inside the frame."""
    lo, hi = radius + 1.0, s - radius - 1.0
    third = s / 3.0
    # region centres for top left, top right, bottom left, bottom right, center
    anchors = np.array([[third, third], [2 * third, third], [third, 2 * third],
                        [2 * third, 2 * third], [s / 2, s / 2]])
    jitter = rng.uniform(-s / 12.0, s / 12.0, (len(position), 2))
    centre = anchors[position] + jitter
    cx = np.clip(centre[:, 0], lo, hi)
    cy = np.clip(centre[:, 1], lo, hi)
    return cx, cy


def _shape_masks(shape, cx, cy, r, s):
    grid = np.arange(s, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - cx[:, None, None].astype(np.float32)  # (N, 1, W)
    dy = grid[None, :, None] - cy[:, None, None].astype(np.float32)  # (N, H, 1)
    r = r[:, None, None].astype(np.float32)
    adx, ady = np.abs(dx), np.abs(dy)
    circle = dx * dx + dy * dy <= r * r
    square = np.maximum(adx, ady) <= 0.8 * r
    # upward triangle: apex at -r, base at +0.75r, half-width growing with depth
    triangle = (dy >= -r) & (dy <= 0.75 * r) & (adx <= (dy + r) * 0.62)
    arm = r / 3.0
    cross = ((adx <= arm) & (ady <= r)) | ((ady <= arm) & (adx <= r))
    masks = np.stack(np.broadcast_arrays(circle, square, triangle, cross))  # (4, N, H, W)
    return masks[shape, np.arange(len(shape))]


def _colours(color, rng, bands):
    lo = np.array([bands[spec.COLORS[c]][0] for c in color])
    hi = np.array([bands[spec.COLORS[c]][1] for c in color])
    hue = (rng.uniform(lo, hi) / 360.0) % 1.0
    sat = rng.uniform(0.65, 1.0, len(color))
    val = rng.uniform(0.75, 1.0, len(color))
    return _hsv_to_rgb(hue, sat, val)


def _hsv_to_rgb(h, s, v):
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([
        np.stack([v, t, p], 1), np.stack([q, v, p], 1), np.stack([p, v, t], 1),
        np.stack([p, q, v], 1), np.stack([t, p, v], 1), np.stack([v, p, q], 1),
    ])  # (6, N, 3)
    return table[i, np.arange(len(h))]
