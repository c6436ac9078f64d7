"""Where X-Sample's target mass goes on the emoji data: same concept, same background habitat, neither.

    python -m xsample_openclip.demo.target_mass --data OUT/data/emoji-seed0-64px [--tau-s 0.2]

The background question: X-Sample's soft targets pull together images whose captions are alike. If
images of one concept also tend to share a background (the emoji data puts a concept's images on its
own habitat more often than chance), the pull between same-concept images is also a pull between
same-habitat images, and the image encoder is rewarded for encoding the habitat. This measures, over
random training batches, how much of each row's off-diagonal target mass lands on images of the same
concept, on images of another concept shown on the anchor's habitat, and how often a same-concept
partner shares the anchor's habitat. CLIP's targets put no mass off the diagonal.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch


def read_rows(data_dir: Path):
    with open(Path(data_dir) / "train.csv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def habitat(row) -> str:
    return row["background"].split(":", 1)[1] if row["background"].startswith("habitat:") else ""


def mass_shares(embeddings, rows, tau_s: float, batch_size: int, batches: int, seed: int = 0) -> dict:
    """Mean over anchors (of concept images on a habitat) of the off-diagonal target mass by pair kind."""
    from ..losses.graph import softmax_targets

    g = torch.Generator().manual_seed(seed)
    concept = [r["concept"] for r in rows]
    place = [habitat(r) for r in rows]
    sums = {"self": 0.0, "same concept": 0.0, "other concept, anchor's habitat": 0.0, "rest": 0.0}
    partners = shared = anchors = 0
    for _ in range(batches):
        idx = torch.randperm(len(rows), generator=g)[:batch_size].tolist()
        target = softmax_targets(embeddings[idx], embeddings[idx], tau_s)
        for a, i in enumerate(idx):
            if not concept[i] or not place[i]:
                continue
            anchors += 1
            for b, j in enumerate(idx):
                kind = ("self" if a == b else "same concept" if concept[j] == concept[i]
                        else "other concept, anchor's habitat" if place[j] == place[i] else "rest")
                sums[kind] += float(target[a, b])
                if kind == "same concept":
                    partners += 1
                    shared += place[j] == place[i]
    shares = {k: v / max(anchors, 1) for k, v in sums.items()}
    shares["same-concept partners on the anchor's habitat"] = shared / max(partners, 1)
    return shares


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.demo.target_mass", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="emoji data folders (e.g. default and decorrelated)")
    p.add_argument("--tau-s", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=50)
    args = p.parse_args(argv)
    from ..targets.encoders import SentenceEncoder

    encoder = SentenceEncoder("minilm")
    print(f"tau_s {args.tau_s}, batches of {args.batch_size} ({args.batches} random batches); anchors: concept "
          "images on a habitat background; shares of a target row\n")
    results = {}
    for folder in args.data:
        rows = read_rows(folder)
        embeddings = encoder.encode([r["title"] for r in rows])
        results[folder] = mass_shares(embeddings, rows, args.tau_s, args.batch_size, args.batches)
    kinds = list(next(iter(results.values())))
    print("| " + " | ".join(["data"] + kinds) + " |\n|---|" + "---:|" * len(kinds))
    for folder, shares in results.items():
        print(f"| {Path(folder).name} | " + " | ".join(f"{shares[k]:.3f}" for k in kinds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
