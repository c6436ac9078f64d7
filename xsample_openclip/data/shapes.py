"""Coloured shapes: the renderer the benchmark and tests use, and the demo's attribute-heavy caption style.

Every image is one shape of a size and colour at a position on a background, and its caption names
all five attributes ("a small red circle at the top left on a grey background"). Captions of this
style are long and alike: the five-attribute sentences of two images share most words, so a sentence
encoder rates them similar (mean cosine ~0.6 with all-MiniLM-L6-v2, against ~0.2 for the emoji
captions), and the colour word moves that similarity little. That is the caption style where a
tau_s tuned on short captions fails (docs: field notes), hence the second demo data set.

``build_shapes_data`` makes it compositional in the spirit of MIT-States: some (colour, shape) pairs
never occur in training; half of those unseen pairs are the validation pairs, the other half the test
pairs. Zero-shot sets per split ask for the colour (8-way), the shape (4-way) and the pair (among all
32 colour-shape pairs) of images of unseen pairs only.
"""
from __future__ import annotations

import itertools
import random
from typing import List, Sequence, Tuple

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20),
           "purple": (140, 40, 170), "orange": (240, 130, 20), "black": (10, 10, 10), "cyan": (20, 200, 210)}
SHAPES = ("circle", "square", "triangle", "cross")
PLACES = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7), "bottom right": (0.7, 0.7)}
SIZES = {"small": 0.14, "large": 0.24}
BACKGROUNDS = {"white": (245, 245, 245), "grey": (160, 160, 160), "pale blue": (200, 220, 245),
               "pale yellow": (250, 245, 200)}

CAPTION_TEMPLATES = (
    "a {size} {colour} {shape} at the {place} on a {background} background",
    "a {background} background with a {size} {colour} {shape} at the {place}",
    "at the {place}, a {size} {colour} {shape} on {background}",
)


def render(colour, shape, place, size, background, px=64, jitter: random.Random | None = None):
    """One shape on a plain background; ``jitter`` (an RNG) moves, resizes and tints it slightly."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (px, px), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)
    cx, cy = PLACES[place]
    r = SIZES[size]
    fill = COLOURS[colour]
    if jitter is not None:
        cx, cy = cx + jitter.uniform(-0.07, 0.07), cy + jitter.uniform(-0.07, 0.07)
        r *= jitter.uniform(0.85, 1.15)
        fill = tuple(min(255, max(0, v + jitter.randint(-18, 18))) for v in fill)
    cx, cy, r = cx * px, cy * px, r * px
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=fill)
        draw.rectangle((cx - r / 3, cy - r, cx + r / 3, cy + r), fill=fill)
    return img


#: Captions naming only the two attributes the unseen-pair test asks about (``--caption-style pair``).
PAIR_TEMPLATES = (
    "a {colour} {shape}",
    "a drawing of a {colour} {shape}",
    "a {shape} in {colour}",
)
#: Caption styles of the training data (``shapes_data.py --caption-style``): ``full`` names all five
#: attributes (the default); ``pair`` only colour and shape; ``mixed`` draws, per image, a full caption or a
#: pair caption with equal odds (short names and long descriptions in one data set).
CAPTION_STYLES = ("full", "pair", "mixed")


def caption(size, colour, shape, place, background, template: int = 0) -> str:
    return CAPTION_TEMPLATES[template].format(size=size, colour=colour, shape=shape, place=place,
                                              background=background)


def styled_caption(style: str, attrs, template: int, short: bool) -> str:
    """The caption of ``attrs`` (size, colour, shape, place, background) in ``style``: phrasing ``template``
    (0-2); ``short`` (``mixed`` only) picks the pair caption."""
    size, colour, shape, place, background = attrs
    if style not in CAPTION_STYLES:
        raise ValueError(f"caption style must be one of {CAPTION_STYLES}, got {style!r}")
    if style == "pair" or (style == "mixed" and short):
        return PAIR_TEMPLATES[template].format(colour=colour, shape=shape)
    return caption(size, colour, shape, place, background, template)


def all_combinations():
    """Every (size, colour, shape, place, background), in a fixed order (2 x 8 x 4 x 4 x 4 = 1024)."""
    return list(itertools.product(SIZES, COLOURS, SHAPES, PLACES, BACKGROUNDS))


def held_out_pairs(seed: int = 0, per_shape: int = 3) -> Tuple[List[tuple], List[tuple]]:
    """(validation pairs, test pairs): (colour, shape) pairs absent from training.

    Each shape loses ``per_shape`` colours, no colour loses more than two shapes, and the unseen pairs
    alternate between validation and test, so both splits test every shape and several colours.
    """
    rng = random.Random(f"{seed}:held-out-pairs")
    colours = list(COLOURS)
    rng.shuffle(colours)
    unseen = [(colours[(i * per_shape + k) % len(colours)], shape)
              for i, shape in enumerate(SHAPES) for k in range(per_shape)]
    return unseen[0::2], unseen[1::2]


def pair_classes() -> List[str]:
    """Class names of the pair task: every colour-shape pair ("red circle")."""
    return [f"{c} {s}" for c, s in itertools.product(COLOURS, SHAPES)]


def sample_attributes(n: int, pairs: Sequence[tuple], rng: random.Random):
    """n attribute tuples (size, colour, shape, place, background) with (colour, shape) drawn from ``pairs``."""
    out = []
    for _ in range(n):
        colour, shape = rng.choice(list(pairs))
        out.append((rng.choice(list(SIZES)), colour, shape, rng.choice(list(PLACES)), rng.choice(list(BACKGROUNDS))))
    return out
