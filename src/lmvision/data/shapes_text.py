"""The strings of the shapes data: captions in varied phrasings (every attribute named) and side
text that is complementary to the image (the colour exactly, the shape only as a family)."""

from __future__ import annotations

from lmvision.data import spec

_SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big", "sizeable")}
_POSITION_WORDS = {
    "top left": ("top left corner", "upper left", "top-left area"),
    "top right": ("top right corner", "upper right", "top-right area"),
    "bottom left": ("bottom left corner", "lower left", "bottom-left area"),
    "bottom right": ("bottom right corner", "lower right", "bottom-right area"),
    "center": ("center", "middle", "centre of the frame"),
}
CAPTION_TEMPLATES = (
    "a {size} {color} {shape} in the {pos}",
    "There is a {size} {color} {shape} in the {pos}.",
    "A {color} {shape}, {size}, placed in the {pos}.",
    "In the {pos} sits a {size} {shape} coloured {color}.",
    "A picture of a {color} {shape}; it is {size} and lies in the {pos}.",
    "{Size} {color} {shape} near the {pos} on a dark background.",
    "The image shows a {size} {shape} in {color}, located in the {pos}.",
    "One {color} {shape} ({size}) in the {pos} of the image.",
)
TEXT_TEMPLATES = (
    "The object is {color}; it is either a {a} or a {b}.",
    "Note: {color}, a {a} or a {b}.",
    "Someone wrote that it was {color} and looked like a {a} or maybe a {b}.",
    "Colour {color}. Shape: {a} or {b}, not sure which.",
    "A {color} thing, could be a {a}, could be a {b}.",
    "Label on the back: {color} ({a}/{b}).",
)


def caption(rng, shape, color, size, position, template: int | None = None) -> tuple[str, int]:
    """A caption of the attributes and the index of its template (drawn unless given)."""
    size_word = _SIZE_WORDS[spec.SIZES[size]][rng.integers(3)]
    drawn = int(rng.integers(len(CAPTION_TEMPLATES)))
    index = drawn if template is None else template
    return CAPTION_TEMPLATES[index].format(
        size=size_word, Size=size_word.capitalize(), color=spec.COLORS[color],
        shape=spec.SHAPES[shape], pos=_POSITION_WORDS[spec.POSITIONS[position]][rng.integers(3)],
    ), index


def side_text(rng, shape, color) -> str:
    """Side text that names the colour exactly but the shape only as a family of two."""
    family = next(f for f in spec.SHAPE_FAMILIES if spec.SHAPES[shape] in f)
    a, b = family if rng.integers(2) == 0 else family[::-1]
    template = TEXT_TEMPLATES[rng.integers(len(TEXT_TEMPLATES))]
    return template.format(color=spec.COLORS[color], a=a, b=b)
