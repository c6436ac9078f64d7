"""Small generated image-caption sets (CSV and webdataset) with distinct, related captions.

Each sample is a coloured shape at a position, captioned e.g. "a red circle at the top left", so
captions are all different yet share words: the X-Sample targets are neither one-hot nor uniform.
"""
import csv
import io
import itertools
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20),
           "purple": (140, 40, 170), "orange": (240, 130, 20), "black": (10, 10, 10), "cyan": (20, 200, 210)}
SHAPES = ("circle", "square", "triangle", "cross")
PLACES = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7), "bottom right": (0.7, 0.7)}


def samples(n=None):
    """(caption, colour, shape, place) for every combination (128), in a fixed order."""
    combos = list(itertools.product(COLOURS, SHAPES, PLACES))
    return [(f"a {c} {s} at the {p}", c, s, p) for c, s, p in combos][:n]


def render(colour, shape, place, size=32):
    img = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    cx, cy = (v * size for v in PLACES[place])
    r = size * 0.22
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=fill)
        draw.rectangle((cx - r / 3, cy - r, cx + r / 3, cy + r), fill=fill)
    return img


def _jpeg(img):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_csv(root, n=64, size=32):
    """A tab-separated CSV (filepath, title) plus its images; returns the CSV path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    path = root / "train.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for i, (caption, c, s, p) in enumerate(samples(n)):
            img_path = root / "images" / f"{i:05d}.jpg"
            img_path.write_bytes(_jpeg(render(c, s, p, size)))
            writer.writerow([str(img_path), caption])
    return path


def write_shards(root, n=64, size=32, shards=2):
    """webdataset tar shards (NNNNN.jpg + NNNNN.txt); returns the brace pattern for --train-data."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    items = samples(n)
    per = -(-len(items) // shards)
    for k in range(shards):
        with tarfile.open(root / f"{k:05d}.tar", "w") as tar:
            for i, (caption, c, s, p) in enumerate(items[k * per:(k + 1) * per], start=k * per):
                for ext, data in (("jpg", _jpeg(render(c, s, p, size))), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / f"{{00000..{shards - 1:05d}}}.tar")
