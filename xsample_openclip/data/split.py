"""Held-out split *by emoji*, never by augmentation: a test emoji has no image at all in training.

Each concept is split on its own (stratified), so every class keeps training members that carry its class
word and has held-out members to test on. Emoji outside the concepts are split the same way per subgroup, for
the caption-retrieval set only. The split depends only on the seed and the emoji keys, not on iteration order.
"""
from __future__ import annotations

import math
import random


def seeded_rng(seed: int, *parts) -> random.Random:
    """An independent, reproducible stream for one purpose (Python hashes str seeds with SHA-512)."""
    return random.Random(":".join([str(seed), *map(str, parts)]))


def split_stratum(keys, fraction: float, min_test: int, min_train: int, seed: int, stratum: str):
    """Return (train_keys, test_keys) for one stratum; both sorted."""
    keys = sorted(keys)
    seeded_rng(seed, "split", stratum).shuffle(keys)
    n_test = max(min_test, math.ceil(fraction * len(keys))) if fraction > 0 else 0
    n_test = min(n_test, max(0, len(keys) - min_train))
    return sorted(keys[n_test:]), sorted(keys[:n_test])
