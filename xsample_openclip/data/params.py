"""The build parameters of the demo data: every field changes the bytes on disk and is part of the cache key."""
from __future__ import annotations

from dataclasses import dataclass, field


def _opt(default, help_text):
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class DemoParams:
    """Everything that changes the bytes on disk (all of it is part of the cache key)."""

    seed: int = 0
    image_size: int = 64
    concept_renders: int = _opt(8, "training images per emoji of a concept")
    other_renders: int = _opt(1, "training images per other emoji (context and negatives, never tested)")
    test_fraction: float = _opt(0.3, "share of each concept's emoji held out for the zero-shot sets")
    cls_images_per_class: int = _opt(60, "images per class in emoji_cls (balanced: held-out emoji in turn)")
    bg_images_per_class: int = _opt(30, "images per class in each background variant")
    retrieval_fraction: float = _opt(0.1, "share of each other subgroup held out for emoji_ret")
    noun_rate: float = _opt(0.4, "share of training captions like 'a dog face, a kind of mammal'")
    noun_only_rate: float = _opt(0.2, "share of training captions like 'a kind of mammal' (rest: the name)")
    plain_rate: float = _opt(0.5, "share of training images on a plain background")
    habitat_match_rate: float = _opt(0.4, "of the other concept images, share on their own habitat")
    max_concept_per_subgroup: int | None = _opt(None, "cap on concept emoji per subgroup (small test builds)")
    max_other_per_subgroup: int | None = _opt(40, "cap on emoji per other subgroup (there are 258 flags)")
    include_skin_tones: bool = _opt(False, "also use the skin-tone variants (near-duplicate images)")
    shard_size: int = _opt(1000, "training samples per tar shard")
    write_csv: bool = _opt(True, "also write train.csv + train/images/ (bit-reproducible CSV loader)")
