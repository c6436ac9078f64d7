"""The demo's second data set: attribute-heavy captions with unseen attribute pairs at test time.

    python -m xsample_openclip.data.shapes_data --out DIR [--seed 0]

Training images are coloured shapes (``shapes.py``) captioned with all five of their attributes
("a large cyan triangle at the bottom left on a pale yellow background", in three phrasings), drawn
only from the (colour, shape) pairs seen in training. The held-out pairs are split between
validation and test (``shapes.held_out_pairs``); for each split, one set of images of its unseen
pairs is labelled three ways, as three clip_benchmark zero-shot sets: ``shapes_colour_<split>`` (8
colours), ``shapes_shape_<split>`` (4 shapes) and ``shapes_pair_<split>`` (all 32 colour-shape pairs).
Deterministic from the seed and cached like the emoji data (``build.py``).

``--caption-style`` (``shapes.CAPTION_STYLES``) changes the training captions only, never the images:
``full`` (the default, above), ``pair`` ("a red square": colour and shape only, three phrasings) or
``mixed`` (per image, a full or a pair caption with equal odds, drawn from its own seeded generator so the
images' generator is untouched). The default's cache key is the one it had before styles existed.
"""
from __future__ import annotations

import argparse
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from . import shapes
from .build import build_cached, sha256_of
from .demo_data import DemoData

BUILDER_VERSION = 1
SPLITS = ("val", "test")
TASKS = {
    "colour": (list(shapes.COLOURS), ("a {c} shape", "something {c}")),
    "shape": (list(shapes.SHAPES), ("a {c}", "a drawing of a {c}")),
    "pair": (shapes.pair_classes(), ("a {c}", "a drawing of a {c}")),
}


@dataclass(frozen=True)
class ShapesParams:
    seed: int = 0
    image_size: int = 64
    train_images: int = 2048
    eval_images: int = 360  # per split; every task labels the same images
    shard_size: int = 1000
    write_csv: bool = True
    caption_style: str = "full"


def _labels(colour, shape):
    return {"colour": list(shapes.COLOURS).index(colour), "shape": list(shapes.SHAPES).index(shape),
            "pair": shapes.pair_classes().index(f"{colour} {shape}")}


def _image(attrs, params, rng):
    from .writers import jpeg_bytes

    size, colour, shape, place, background = attrs
    return jpeg_bytes(shapes.render(colour, shape, place, size, background, px=params.image_size, jitter=rng))


def _write_everything(build_dir: Path, params: ShapesParams) -> dict:
    from .writers import brace_pattern, write_cb_classification, write_csv, write_webdataset

    val_pairs, test_pairs = shapes.held_out_pairs(params.seed)
    unseen = set(val_pairs) | set(test_pairs)
    seen = [p for p in ((c, s) for c in shapes.COLOURS for s in shapes.SHAPES) if p not in unseen]
    rng = random.Random(f"{params.seed}:train")
    style_rng = random.Random(f"{params.seed}:caption-style")  # never touches the images' generator
    rows = []
    for i, attrs in enumerate(shapes.sample_attributes(params.train_images, seen, rng)):
        size, colour, shape, place, background = attrs
        text = shapes.styled_caption(params.caption_style, attrs, rng.randrange(3), style_rng.random() < 0.5)
        rows.append((f"{i:06d}", _image(attrs, params, rng), text,
                     {"colour": colour, "shape": shape, "size": size, "place": place, "background": background}))
    shards = write_webdataset(build_dir / "train", [(k, j, c) for k, j, c, _ in rows], params.shard_size)
    csv_rel = None
    if params.write_csv:
        csv_rel = "train.csv"
        write_csv(build_dir / csv_rel, rows, build_dir / "train" / "images", extra_columns=list(rows[0][3]))
    eval_sets, splits = {}, {}
    for split, pairs in zip(SPLITS, (val_pairs, test_pairs)):
        split_rng = random.Random(f"{params.seed}:{split}")
        attrs = [(split_rng.choice(list(shapes.SIZES)), *pairs[i % len(pairs)], split_rng.choice(list(shapes.PLACES)),
                  split_rng.choice(list(shapes.BACKGROUNDS))) for i in range(params.eval_images)]
        images = [(f"{i:06d}", _image(a, params, split_rng), _labels(a[1], a[2])) for i, a in enumerate(attrs)]
        splits[split] = []
        for task, (classnames, templates) in TASKS.items():
            name = f"shapes_{task}_{split}"
            write_cb_classification(build_dir / name, [(k, j, labels[task]) for k, j, labels in images],
                                    classnames, templates)
            eval_sets[name] = {"path": name, "task": "zeroshot_classification", "split": split,
                               "num_samples": len(images)}
            splits[split].append(name)
    data_files = sorted(str(p.relative_to(build_dir)) for p in build_dir.rglob("*")
                        if p.is_file() and "images" not in p.relative_to(build_dir).parts)
    return {
        "kind": "shapes",
        "params": asdict(params),
        "train": {"shards": str(Path(brace_pattern(shards)).relative_to(build_dir)), "num_shards": len(shards),
                  "num_samples": len(rows), "csv": csv_rel, "caption_examples": [c for _, _, c, _ in rows[:8]]},
        "classes": list(shapes.COLOURS),
        "held_out_pairs": {"val": [" ".join(p) for p in val_pairs], "test": [" ".join(p) for p in test_pairs]},
        "seen_pairs": [" ".join(p) for p in seen],
        "eval_sets": eval_sets,
        "splits": splits,
        "files": data_files,
        "sha256": {rel: sha256_of(build_dir / rel) for rel in data_files if not rel.endswith(".csv")},
    }


def cache_params(params: ShapesParams) -> dict:
    """The params in the cache key: the default caption style is left out, so data built before styles
    existed is still found."""
    key = asdict(params)
    if key["caption_style"] == "full":
        del key["caption_style"]
    return key


def build_shapes_data(out_dir, seed: int = 0, image_size: int = 64, *, force: bool = False, **options) -> DemoData:
    """Build (or reuse) the shapes demo data in ``out_dir``."""
    params = ShapesParams(seed=seed, image_size=image_size, **options)
    if params.caption_style not in shapes.CAPTION_STYLES:
        raise ValueError(f"caption_style must be one of {shapes.CAPTION_STYLES}, got {params.caption_style!r}")
    key = {"builder": "shapes", "builder_version": BUILDER_VERSION, "params": cache_params(params)}
    return build_cached(out_dir, key, lambda build_dir, root: _write_everything(build_dir, params),
                        lambda root, manifest: DemoData.from_manifest(root, manifest, ShapesParams), force)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m xsample_openclip.data.shapes_data",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--caption-style", choices=shapes.CAPTION_STYLES, default="full",
                        help="training captions: full (all five attributes), pair (colour and shape only) or "
                             "mixed (either, per image); the images are the same")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    data = build_shapes_data(args.out, args.seed, args.image_size, force=args.force, caption_style=args.caption_style)
    print(f"shapes data in {data.root}: {data.train_num_samples} training images; eval sets: "
          + ", ".join(data.eval_sets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
