"""Generated data for the benchmark: sentence-like captions, caption-only shards, image-caption CSV sets.

- ``text_captions``: any number of distinct captions of about 10 words ("a shiny red kite floating
  near a river at sunset"), drawn without replacement from ~66M combinations: caption throughput
  (MiniLM, precompute, host-side keys) needs many distinct captions, which the shapes cannot give.
- ``write_shape_csv``: OpenCLIP's CSV layout of coloured-shape images (``data.shapes``) written by the
  project's one CSV writer (``data.writers``): each distinct shape is one image file, rows cycle through
  them, captions are the shapes' own ("a small red circle at the top left on a grey background") unless
  given (e.g. distinct ``text_captions``, so that every row is a new caption for the online encoder).
"""
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..data import shapes, writers

_DET = ("a", "the", "one", "an old", "a new", "a single")
_ADJ = ("red", "green", "blue", "yellow", "small", "large", "wooden", "shiny", "striped", "tiny", "dusty",
        "bright", "dark", "broken", "fluffy", "metal")
_NOUN = ("dog", "cat", "car", "bicycle", "house", "tree", "boat", "chair", "bird", "horse", "kite", "train",
         "lamp", "guitar", "teapot", "umbrella", "clock", "bus", "cake", "robot")
_VERB = ("standing", "sitting", "lying", "parked", "floating", "waiting", "resting", "hanging", "shown",
         "leaning", "spinning", "glowing")
_PLACE = ("on a beach", "in a park", "near a river", "on a busy street", "in a kitchen", "under a bridge",
          "in the snow", "next to a fence", "on a wooden table", "in a garden", "by the window",
          "in a small room", "at the station", "on a hill", "in the forest")
_TIME = ("at night", "in the morning", "at sunset", "on a rainy day", "in winter", "during summer",
         "under a cloudy sky", "in bright light", "in black and white", "from above", "up close", "in the fog")
_TEXT_DIMS = (_DET, _ADJ, _ADJ, _NOUN, _VERB, _PLACE, _TIME)
TEXT_COMBINATIONS = int(np.prod([len(d) for d in _TEXT_DIMS]))


def text_captions(n: int, seed: int = 0) -> List[str]:
    """n distinct captions (n up to ``TEXT_COMBINATIONS``), the same for the same seed."""
    if not 0 <= n <= TEXT_COMBINATIONS:
        raise ValueError(f"between 0 and {TEXT_COMBINATIONS} distinct captions, asked for {n}")
    picks = np.random.default_rng(seed).choice(TEXT_COMBINATIONS, size=n, replace=False)
    return [_caption(int(index)) for index in picks]


def _caption(index: int) -> str:
    words = []
    for dim in reversed(_TEXT_DIMS):
        index, r = divmod(index, len(dim))
        words.append(dim[r])
    return " ".join(reversed(words))


def write_shape_csv(root, n: int, px: int = 64, captions: Optional[Sequence[str]] = None) -> Path:
    """A CSV of n rows (``root/train.csv``) over at most 1024 distinct shape images; returns its path."""
    if captions is not None and len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} rows")
    combos = shapes.all_combinations()
    root = Path(root)

    def rows():
        for i in range(n):
            size, colour, shape, place, background = combos[i % len(combos)]
            image = None
            if i < len(combos):
                image = writers.jpeg_bytes(shapes.render(colour, shape, place, size, background, px=px))
            text = captions[i] if captions is not None else shapes.caption(size, colour, shape, place, background)
            yield f"{i % len(combos):06d}", image, text

    return writers.write_csv(root / "train.csv", rows(), root / "images")
