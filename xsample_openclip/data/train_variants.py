"""Variants of a demo training CSV for the paper's comparison: class captions, and a fraction of the images.

- ``class_caption_csv``: the same images in the same order, each captioned by its class, "a photo of a
  {class}" ("an" before a vowel), where the class is the emoji's concept (``concept`` column of the emoji data's train.csv), or
  for an emoji outside the 10 concepts its Unicode subgroup ("person-activity" -> "a photo of a person
  activity"). This is the paper's ImageNet graph (captions made from class names): X-CLR over it, and
  SupCon (the same loss with a tiny tau_s: identical captions are exact ties, ``losses.graph.IDENTICAL``).
- ``fraction_csv``: the first F of a seeded shuffle of the training images, written in their original
  order; one shuffle per seed, so the subsets of one seed are nested (25 % within 50 % within 100 %).
Both write through the data package's one CSV writer (``writers.write_csv``) and re-use the images on disk.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Dict, List, Sequence

CLASS_TEMPLATE = "a photo of {}"


def class_caption(name: str, template: str = CLASS_TEMPLATE) -> str:
    """"a photo of a tool", "a photo of an animal"."""
    return template.format(("an " if name[:1].lower() in "aeiou" else "a ") + name)


def read_train_csv(path) -> List[Dict[str, str]]:
    """The rows of an OpenCLIP training CSV (tab-separated, header ``filepath``, ``title``, ...)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"filepath", "title"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} has no column {', '.join(sorted(missing))}: expected an OpenCLIP training "
                             "CSV written by xsample_openclip.data (filepath, title, ...)")
        return list(reader)


def _write_rows(rows: Sequence[Dict[str, str]], out_csv, captions: Sequence[str]) -> Path:
    """``rows`` again with ``captions`` as titles, through ``writers.write_csv`` (images are not rewritten)."""
    from .writers import write_csv

    if not rows:
        raise ValueError(f"no training rows to write to {out_csv}")
    paths = [Path(r["filepath"]) for r in rows]
    folders, suffixes = {p.parent for p in paths}, {p.suffix for p in paths}
    if len(folders) != 1 or len(suffixes) != 1:
        raise ValueError(f"the training images sit in {len(folders)} folders with {len(suffixes)} file types; "
                         "expected one folder and one type (a CSV written by xsample_openclip.data)")
    extra = [c for c in rows[0] if c not in ("filepath", "title")]
    samples = [(p.stem, None, caption, {c: r[c] for c in extra}) for p, r, caption in zip(paths, rows, captions)]
    return write_csv(out_csv, samples, folders.pop(), image_ext=suffixes.pop()[1:], extra_columns=extra)


def class_name(row: Dict[str, str], subgroups: Dict[str, str]) -> str:
    """The emoji's concept, or its Unicode subgroup (hyphens as spaces) when it belongs to no concept."""
    if row.get("concept"):
        return row["concept"]
    key = row.get("emoji", "")
    if key not in subgroups:
        raise ValueError(f"training image {row['filepath']}: emoji {key!r} has no concept and is not in the emoji "
                         "catalogue; rebuild the demo data (its train.csv records emoji and concept)")
    return subgroups[key].replace("-", " ")


def emoji_subgroups() -> Dict[str, str]:
    """{emoji key: Unicode subgroup} of the whole catalogue (skin tones included)."""
    from .catalog import load_catalog

    return {e.key: e.subgroup for e in load_catalog(include_skin_tones=True)}


def class_caption_csv(train_csv, out_csv, template: str = CLASS_TEMPLATE) -> Path:
    """The training CSV with every caption replaced by its class caption (same images, same order)."""
    rows = read_train_csv(train_csv)
    if rows and not {"concept", "emoji"} <= set(rows[0]):
        raise ValueError(f"{train_csv} has no concept/emoji columns: class captions need the emoji data's "
                         "train.csv (python -m xsample_openclip.data.emoji)")
    subgroups = emoji_subgroups() if any(not r["concept"] for r in rows) else {}
    return _write_rows(rows, out_csv, [class_caption(class_name(r, subgroups), template) for r in rows])


def fraction_indices(n: int, fraction: float, seed: int) -> List[int]:
    """The first ``round(fraction * n)`` (at least 1) of a shuffle of range(n) seeded by ``seed``, sorted:
    for one seed, a smaller fraction's subset lies within a larger one's."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the data fraction must be in (0, 1], got {fraction}")
    order = list(range(n))
    random.Random(f"data-fraction:{seed}").shuffle(order)
    return sorted(order[:max(1, round(fraction * n))])


def fraction_csv(train_csv, out_csv, fraction: float, seed: int) -> Path:
    """The training CSV restricted to ``fraction_indices`` of its rows (original order kept)."""
    rows = read_train_csv(train_csv)
    chosen = [rows[i] for i in fraction_indices(len(rows), fraction, seed)]
    return _write_rows(chosen, out_csv, [r["title"] for r in chosen])
