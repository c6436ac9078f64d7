"""Generated data for ``xsample_openclip.bench``: image-caption sets and large caption-only shard sets.

- ``write_csv`` / ``write_shards``: coloured shapes rendered with PIL, each captioned with what is
  drawn ("a small red circle at the top left on a grey background"); 1,024 distinct captions, repeated
  beyond that (as real data repeats captions). The same layout OpenCLIP's CSV and webdataset loaders read.
- ``text_captions`` / ``write_text_shards``: any number of distinct, sentence-like captions (about 10
  words, drawn without replacement from ~66M combinations) in ``.txt``-only tar shards, for caption
  throughput (MiniLM, ``precompute``); no images.
"""
import csv
import io
import itertools
import tarfile
from pathlib import Path
from typing import List

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20),
           "purple": (140, 40, 170), "orange": (240, 130, 20), "black": (10, 10, 10), "cyan": (20, 200, 210)}
SHAPES = ("circle", "square", "triangle", "cross")
PLACES = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7), "bottom right": (0.7, 0.7)}
SIZES = {"small": 0.14, "large": 0.24}
BACKGROUNDS = {"white": (245, 245, 245), "grey": (160, 160, 160), "pale blue": (200, 220, 245),
               "pale yellow": (250, 245, 200)}


def shape_samples(n: int):
    """(caption, colour, shape, place, size, background) for n samples, in a fixed order."""
    combos = list(itertools.product(SIZES, COLOURS, SHAPES, PLACES, BACKGROUNDS))
    out = []
    for i in range(n):
        size, colour, shape, place, bg = combos[i % len(combos)]
        out.append((f"a {size} {colour} {shape} at the {place} on a {bg} background", colour, shape, place,
                    size, bg))
    return out


def render(colour, shape, place, size, background, px=64):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (px, px), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)
    cx, cy = (v * px for v in PLACES[place])
    r = px * SIZES[size]
    fill = COLOURS[colour]
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


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_csv(root, n=512, px=64) -> Path:
    """A tab-separated CSV (filepath, title) and its images; returns the CSV path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    path = root / "train.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for i, (caption, *attrs) in enumerate(shape_samples(n)):
            img_path = root / "images" / f"{i:06d}.jpg"
            img_path.write_bytes(_jpeg(render(*attrs, px=px)))
            writer.writerow([str(img_path), caption])
    return path


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root, n=512, px=64, shards=2) -> str:
    """webdataset shards (NNNNNN.jpg + NNNNNN.txt); returns the brace pattern for --train-data."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    items = shape_samples(n)
    per = -(-n // shards)
    for k in range(shards):
        with tarfile.open(root / f"{k:05d}.tar", "w") as tar:
            for i in range(k * per, min((k + 1) * per, n)):
                caption, *attrs = items[i]
                _add(tar, f"{i:06d}.jpg", _jpeg(render(*attrs, px=px)))
                _add(tar, f"{i:06d}.txt", caption.encode())
    return str(root / f"{{00000..{shards - 1:05d}}}.tar")


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
    """n distinct captions (n up to ``TEXT_COMBINATIONS``), deterministic for a seed."""
    if n > TEXT_COMBINATIONS:
        raise ValueError(f"at most {TEXT_COMBINATIONS} distinct captions, asked for {n}")
    picks = np.random.default_rng(seed).choice(TEXT_COMBINATIONS, size=n, replace=False)
    out = []
    for idx in picks.tolist():
        words = []
        for dim in reversed(_TEXT_DIMS):
            idx, r = divmod(idx, len(dim))
            words.append(dim[r])
        det, a1, a2, noun, verb, place, time = reversed(words)
        out.append(f"{det} {a1} {a2} {noun} {verb} {place} {time}")
    return out


def write_text_shards(root, captions: List[str], shards=4) -> str:
    """``.txt``-only webdataset shards of the captions; returns the brace pattern."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    per = -(-len(captions) // shards)
    for k in range(shards):
        with tarfile.open(root / f"{k:05d}.tar", "w") as tar:
            for i in range(k * per, min((k + 1) * per, len(captions))):
                _add(tar, f"{i:08d}.txt", captions[i].encode())
    return str(root / f"{{00000..{shards - 1:05d}}}.tar")
