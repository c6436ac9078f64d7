"""Small generated image-caption sets (CSV and webdataset) with distinct, related captions.

Each sample is a coloured shape at a position, captioned e.g. "a red circle at the top left", so
captions are all different yet share words: the X-Sample targets are neither one-hot nor uniform.
"""
import csv
import io
import itertools
import tarfile
from pathlib import Path

from xsample_openclip import bench_data
from xsample_openclip.bench_data import COLOURS, PLACES, SHAPES


def samples(n=None):
    """(caption, colour, shape, place) for every combination (128), in a fixed order."""
    combos = list(itertools.product(COLOURS, SHAPES, PLACES))
    return [(f"a {c} {s} at the {p}", c, s, p) for c, s, p in combos][:n]


def render(colour, shape, place, size=32):
    """A large shape on white (the package's bench renderer)."""
    return bench_data.render(colour, shape, place, "large", "white", px=size)


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
