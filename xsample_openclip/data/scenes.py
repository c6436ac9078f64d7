"""Backgrounds and foreground placement: the pixels of every image in the demo data.

Three kinds of background:
- ``plain``: one near-neutral light colour; carries no class information.
- ``habitat``: a concept's two-colour gradient with 2-4 faded scenery emoji scattered over it (see
  ``concepts.py``); colours are jittered and scenery re-drawn for every image, so no two are identical.
- ``generic``: a gradient between two random colours without scenery, for emoji outside every concept, so
  that habitats stay specific to their concept.

A foreground emoji is pasted at a random scale (55-85 % of the image side) and position. ``Placement`` is
drawn once and can be reused on several backgrounds, which makes the background-robustness variants differ
only in their background.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .concepts import Habitat

FOREGROUND_SCALE = (0.55, 0.85)
SCENERY_SCALE = (0.22, 0.4)
SCENERY_OPACITY = 0.7


@dataclass(frozen=True)
class Placement:
    scale: float  # long side of the foreground, as a fraction of the image side
    x: float  # left edge, as a fraction of the free horizontal space
    y: float  # top edge, as a fraction of the free vertical space


def draw_placement(rng: random.Random) -> Placement:
    return Placement(rng.uniform(*FOREGROUND_SCALE), rng.random(), rng.random())


def _jitter(color, rng: random.Random, amount: int = 18):
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in color)


def _gradient(size: int, top, bottom) -> Image.Image:
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    rows = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return Image.fromarray(np.repeat(rows, size, axis=1).round().astype(np.uint8), "RGB")


def resize_sprite(sprite: Image.Image, long_side: int) -> Image.Image:
    """Resize an RGBA sprite with premultiplied alpha (no dark fringes from transparent pixels)."""
    w, h = sprite.size
    factor = max(1, long_side) / max(w, h)
    new_size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return sprite.convert("RGBa").resize(new_size, Image.Resampling.LANCZOS).convert("RGBA")


def _paste(canvas: Image.Image, sprite: Image.Image, left: int, top: int, opacity: float = 1.0):
    """Alpha-composite ``sprite`` with its top-left corner at (left, top); parts outside are cut off."""
    if opacity < 1.0:
        sprite = sprite.copy()
        sprite.putalpha(sprite.getchannel("A").point(lambda a: round(a * opacity)))
    canvas.alpha_composite(sprite, (max(left, 0), max(top, 0)), (max(-left, 0), max(-top, 0)))


def plain_background(size: int, rng: random.Random) -> Image.Image:
    level = rng.randint(200, 250)
    return Image.new("RGB", (size, size), _jitter((level, level, level), rng, 10))


def generic_background(size: int, rng: random.Random) -> Image.Image:
    top = tuple(rng.randint(40, 250) for _ in range(3))
    bottom = tuple(rng.randint(40, 250) for _ in range(3))
    return _gradient(size, top, bottom)


def habitat_background(size: int, habitat: Habitat, scenery_sprites: dict, rng: random.Random) -> Image.Image:
    """A concept's habitat: jittered gradient plus scenery emoji, some cut by the image border."""
    top, bottom = (_jitter(c, rng) for c in habitat.colors)
    canvas = _gradient(size, top, bottom).convert("RGBA")
    for _ in range(rng.randint(2, 4)):
        name = rng.choice(habitat.scenery)
        sprite = resize_sprite(scenery_sprites[name], round(size * rng.uniform(*SCENERY_SCALE)))
        left = rng.randint(-sprite.width // 3, size - 2 * sprite.width // 3)
        top_px = rng.randint(-sprite.height // 3, size - 2 * sprite.height // 3)
        _paste(canvas, sprite, left, top_px, SCENERY_OPACITY)
    return canvas.convert("RGB")


def compose(background: Image.Image, sprite: Image.Image | None, placement: Placement | None) -> Image.Image:
    """Paste the foreground sprite on the background (or return the background alone)."""
    if sprite is None:
        return background.copy()
    size = background.width
    fg = resize_sprite(sprite, round(size * placement.scale))
    left = round(placement.x * (size - fg.width))
    top = round(placement.y * (size - fg.height))
    canvas = background.convert("RGBA")
    _paste(canvas, fg, left, top)
    return canvas.convert("RGB")
