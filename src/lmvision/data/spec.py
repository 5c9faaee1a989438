"""Label vocabularies of the embedded datasets, importable without torch.

The config resolvers use this module to derive `data.num_classes` and `data.task` from
`data.target` while a config is composed, before anything heavy is imported.
"""

from __future__ import annotations

from lmvision.errors import UserError

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "orange", "green", "teal", "blue", "purple")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")

# Pairs that one modality cannot tell apart (see ShapesDataset's docstring).
# The image shows one hue band per colour pair; the side text names the colour exactly.
COLOR_PAIRS = (("red", "orange"), ("green", "teal"), ("blue", "purple"))
# The side text names a shape family of two; the image shows the shape exactly.
SHAPE_FAMILIES = (("circle", "square"), ("triangle", "cross"))

SHAPES_TARGETS = ("shape", "color", "color_shape", "attributes")
# How colours are drawn: "paired" (one hue band per pair, see COLOR_PAIRS) or "distinct" (every
# colour in its own separable hue band, so the image alone determines the colour).
SHAPES_COLORINGS = ("paired", "distinct")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def shapes_classes(target: str) -> list[str]:
    """Class names of the `shapes` dataset for a `data.target`."""
    if target == "shape":
        return list(SHAPES)
    if target == "color":
        return list(COLORS)
    if target == "color_shape":
        return [f"{c} {s}" for c in COLORS for s in SHAPES]
    if target == "attributes":
        return [*SHAPES, *COLORS, *SIZES, *POSITIONS]
    raise UserError(
        f"data.target={target!r} is not a target of the shapes dataset; "
        f"choose one of {', '.join(SHAPES_TARGETS)}"
    )


def shapes_class_parts(target: str) -> list[tuple[str, ...]] | None:
    """For targets whose classes combine attributes (``color_shape``), each class's parts, e.g.
    ``("red", "circle")``; ``None`` for the others."""
    if target == "color_shape":
        return [(c, s) for c in COLORS for s in SHAPES]
    return None


def num_classes(dataset: str, target: str | None = None) -> int:
    """Number of classes (or tags) of an embedded dataset; used by `${lmv.num_classes:...}`."""
    if dataset == "shapes":
        return len(shapes_classes(str(target)))
    if dataset == "digits":
        return len(DIGITS)
    raise UserError(f"lmv.num_classes knows 'shapes' and 'digits', not {dataset!r}")


def task(dataset: str, target: str | None = None) -> str:
    """'multilabel' for attribute tagging, otherwise 'multiclass'; used by `${lmv.task:...}`."""
    if dataset == "shapes":
        shapes_classes(str(target))  # validates the target
        return "multilabel" if target == "attributes" else "multiclass"
    return "multiclass"
