"""The images of every set: training samples and the zero-shot, retrieval and background-robustness sets.

Every image draws its randomness from its own stream, keyed by seed, purpose, emoji and render index, so an
image does not change when other images are added or removed.
"""
from __future__ import annotations

from ..progress import progress_bar
from .emoji_captions import retrieval_captions, train_caption
from .catalog import load_catalog
from .concepts import CONCEPTS, Concept
from .openmoji_font import OpenMojiFont
from .params import DemoParams
from .scenes import (SCENERY_SCALE, compose, draw_placement, generic_background, habitat_background,
                     plain_background, resize_sprite)
from .selection import Item
from .split import seeded_rng
from .writers import jpeg_bytes

BG_VARIANTS = ("original", "mixed_same", "mixed_rand", "only_fg", "only_bg")


class Renderer:
    """Holds the sprites and draws every kind of image the sets need."""

    def __init__(self, items, params: DemoParams, progress: bool):
        self.size = params.image_size
        self.params = params
        font = OpenMojiFont()
        names = {e.name: e for e in load_catalog(include_skin_tones=False)}
        scenery = {name: names[name] for c in CONCEPTS for name in c.habitat.scenery}
        texts = [it.emoji.text for it in items] + [e.text for e in scenery.values()]
        available = set(font.prepare(texts))
        missing = [t for t in texts if t not in available]
        if missing:
            raise RuntimeError(f"OpenMoji has no glyph for {len(missing)} emoji, e.g. {missing[:5]}")
        glyph_px = max(48, round(1.5 * self.size))
        unique = list(dict.fromkeys(texts))
        self.sprites = {
            t: font.render(t, glyph_px)
            for t in progress_bar(unique, desc="render glyphs", unit="emoji", disable=not progress, leave=False)
        }
        # Scenery is drawn small: shrink it once instead of for every background.
        largest = round(SCENERY_SCALE[1] * self.size)
        self.scenery = {name: resize_sprite(self.sprites[e.text], largest) for name, e in scenery.items()}

    def background(self, kind: str, concept: Concept | None, rng):
        if kind == "plain":
            return plain_background(self.size, rng)
        if kind == "generic":
            return generic_background(self.size, rng)
        return habitat_background(self.size, concept.habitat, self.scenery, rng)

    def image(self, item: Item | None, placement, bg_kind: str, bg_concept, rng):
        background = self.background(bg_kind, bg_concept, rng)
        sprite = self.sprites[item.emoji.text] if item is not None else None
        return compose(background, sprite, placement)


def training_background(item: Item, params: DemoParams, rng) -> tuple[str, Concept | None]:
    """The background rule shared by training and the ``original`` variant."""
    if rng.random() < params.plain_rate:
        return "plain", None
    if item.concept is None:
        return "generic", None
    if rng.random() < params.habitat_match_rate:
        return "habitat", item.concept
    return "habitat", rng.choice([c for c in CONCEPTS if c is not item.concept])


def _bg_label(kind, concept):
    return f"habitat:{concept.name}" if kind == "habitat" else kind


def build_train(renderer: Renderer, items, params: DemoParams, progress: bool):
    rows = []
    jobs = [
        (item, r) for item in items
        for r in range(params.concept_renders if item.concept else params.other_renders)
    ]
    for item, r in progress_bar(jobs, desc="train images", unit="img", disable=not progress, leave=False):
        rng = seeded_rng(params.seed, "train", item.emoji.key, r)
        placement = draw_placement(rng)
        kind, bg_concept = training_background(item, params, rng)
        caption = train_caption(item.emoji.name, item.noun, rng, params.noun_rate, params.noun_only_rate,
                                item.fine_noun)
        image = renderer.image(item, placement, kind, bg_concept, rng)
        extra = {"emoji": item.emoji.key, "concept": item.concept.name if item.concept else "",
                 "background": _bg_label(kind, bg_concept)}
        rows.append((jpeg_bytes(image), caption, extra))
    seeded_rng(params.seed, "train-order").shuffle(rows)
    return [(f"{i:06d}", jpeg, caption, extra) for i, (jpeg, caption, extra) in enumerate(rows)]


def balanced_jobs(test_items, per_class: int):
    """(item, render index) pairs, exactly ``per_class`` per concept, cycling through its held-out emoji.

    Classes have 4 to 38 held-out emoji; equal image counts make top-1 accuracy a class-balanced score.
    """
    jobs = []
    for concept in CONCEPTS:
        members = [item for item in test_items if item.concept is concept]
        jobs += [(members[i % len(members)], i // len(members)) for i in range(per_class)] if members else []
    return jobs


def build_cls(renderer: Renderer, test_items, params: DemoParams, progress: bool):
    labels = {c.name: i for i, c in enumerate(CONCEPTS)}
    out = []
    jobs = balanced_jobs(test_items, params.cls_images_per_class)
    for item, r in progress_bar(jobs, desc="zero-shot set", unit="img", disable=not progress, leave=False):
        rng = seeded_rng(params.seed, "cls", item.emoji.key, r)
        image = renderer.image(item, draw_placement(rng), "plain", None, rng)
        out.append((f"{len(out):06d}", jpeg_bytes(image), labels[item.concept.name]))
    return out


def build_bg_variants(renderer: Renderer, test_items, params: DemoParams, progress: bool):
    """Same foregrounds at the same placements, five background conditions."""
    labels = {c.name: i for i, c in enumerate(CONCEPTS)}
    variants = {v: [] for v in BG_VARIANTS}
    jobs = balanced_jobs(test_items, params.bg_images_per_class)
    for item, r in progress_bar(jobs, desc="background sets", unit="fg", disable=not progress, leave=False):
        placement = draw_placement(seeded_rng(params.seed, "bg-placement", item.emoji.key, r))
        others = [c for c in CONCEPTS if c is not item.concept]
        for variant in BG_VARIANTS:
            rng = seeded_rng(params.seed, "bg", variant, item.emoji.key, r)
            foreground = item
            if variant == "original":
                kind, bg_concept = training_background(item, params, rng)
            elif variant == "mixed_same":
                kind, bg_concept = "habitat", item.concept
            elif variant == "mixed_rand":
                kind, bg_concept = "habitat", rng.choice(others)
            elif variant == "only_fg":
                kind, bg_concept = "plain", None
            else:  # only_bg
                kind, bg_concept, foreground = "habitat", item.concept, None
            image = renderer.image(foreground, placement, kind, bg_concept, rng)
            key = f"{len(variants[variant]):06d}"
            variants[variant].append((key, jpeg_bytes(image), labels[item.concept.name]))
    return variants


def build_retrieval(renderer: Renderer, items, params: DemoParams, progress: bool):
    out = []
    for item in progress_bar(items, desc="retrieval set", unit="img", disable=not progress, leave=False):
        rng = seeded_rng(params.seed, "ret", item.emoji.key)
        image = renderer.image(item, draw_placement(rng), "plain", None, rng)
        out.append((f"{len(out):06d}", jpeg_bytes(image), retrieval_captions(item.emoji.name, item.noun)))
    return out
