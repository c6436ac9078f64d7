"""Where X-Sample's target mass goes on the demo data, by what a sample shares with its anchor.

    python -m xsample_openclip.demo.target_mass --data OUT/data/emoji-seed0-64px [--tau-s 0.2]
    python -m xsample_openclip.demo.target_mass --data OUT/data/shapes-seed0-64px --tau-s 0.033

X-Sample's soft targets pull together images whose captions are alike; what the image encoder is
rewarded for encoding depends on what those images share. Over random training batches this measures
how each target row's mass splits by kind of partner (CLIP's targets put all of it on "self"):

- emoji data (the background question): same concept, another concept shown on the anchor's habitat,
  the rest; and how often a same-concept partner sits on the anchor's habitat. If a concept's images
  often share a habitat, the pull between same-concept images is also a pull between same-habitat
  images. Anchors: concept images on a habitat background.
- shapes data (the attribute question): same colour and shape, same shape only, same colour only,
  neither. Anchors: every image.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch


def read_rows(data_dir: Path) -> List[dict]:
    with open(Path(data_dir) / "train.csv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def habitat(row) -> str:
    return row["background"].split(":", 1)[1] if row["background"].startswith("habitat:") else ""


def emoji_kind(a: dict, b: dict) -> str:
    if b["concept"] == a["concept"]:
        return "same concept"
    return "other concept, anchor's habitat" if habitat(b) == habitat(a) else "rest"


def emoji_anchor(row: dict) -> bool:
    return bool(row["concept"]) and bool(habitat(row))


def shapes_kind(a: dict, b: dict) -> str:
    colour, shape = a["colour"] == b["colour"], a["shape"] == b["shape"]
    return ("same colour and shape" if colour and shape else "same shape only" if shape
            else "same colour only" if colour else "neither")


KINDS = {"emoji": (emoji_kind, emoji_anchor), "shapes": (shapes_kind, lambda row: True)}


def data_kind(rows: List[dict]) -> str:
    return "shapes" if rows and "shape" in rows[0] else "emoji"


def mass_shares(embeddings, rows, tau_s: float, batch_size: int, batches: int, seed: int = 0,
                kind: Optional[Callable] = None, anchor: Optional[Callable] = None) -> Dict[str, float]:
    """Mean over anchors of the target mass per kind of partner (``self`` included; shares sum to 1)."""
    from ..losses.graph import softmax_targets

    kind, anchor = kind or emoji_kind, anchor or emoji_anchor
    g = torch.Generator().manual_seed(seed)
    sums: Dict[str, float] = {"self": 0.0}
    anchors = partners = shared = 0
    for _ in range(batches):
        idx = torch.randperm(len(rows), generator=g)[:batch_size].tolist()
        target = softmax_targets(embeddings[idx], embeddings[idx], tau_s)
        for a, i in enumerate(idx):
            if not anchor(rows[i]):
                continue
            anchors += 1
            for b, j in enumerate(idx):
                name = "self" if a == b else kind(rows[i], rows[j])
                sums[name] = sums.get(name, 0.0) + float(target[a, b])
                if name == "same concept":
                    partners += 1
                    shared += habitat(rows[j]) == habitat(rows[i])
    shares = {k: v / max(anchors, 1) for k, v in sums.items()}
    if partners:
        shares["same-concept partners on the anchor's habitat"] = shared / partners
    return shares


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.demo.target_mass", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True,
                   help="demo data folders of one kind (emoji: e.g. default and decorrelated; or shapes)")
    p.add_argument("--tau-s", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=50)
    args = p.parse_args(argv)
    from ..targets.encoders import SentenceEncoder

    encoder = SentenceEncoder("minilm")
    results = {}
    for folder in args.data:
        rows = read_rows(folder)
        kind, anchor = KINDS[data_kind(rows)]
        embeddings = encoder.encode([r["title"] for r in rows])
        results[folder] = mass_shares(embeddings, rows, args.tau_s, args.batch_size, args.batches,
                                      kind=kind, anchor=anchor)
    print(f"tau_s {args.tau_s}, batches of {args.batch_size} ({args.batches} random batches); "
          "mean share of a target row by kind of partner\n")
    kinds = sorted({k for shares in results.values() for k in shares}, key=lambda k: (k != "self", k))
    print("| " + " | ".join(["data"] + kinds) + " |\n|---|" + "---:|" * len(kinds))
    for folder, shares in results.items():
        print(f"| {Path(folder).name} | " + " | ".join(f"{shares.get(k, float('nan')):.3f}" for k in kinds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
