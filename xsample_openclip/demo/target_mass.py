"""Where X-Sample's target mass goes on the demo data, by what a sample shares with its anchor.

    python -m xsample_openclip.demo.target_mass --data OUT/data/emoji-seed0-64px [--tau-s 0.2]
    python -m xsample_openclip.demo.target_mass --data OUT/data/shapes-seed0-64px --tau-s 0.033
    python -m xsample_openclip.demo.target_mass --data OUT/data/shapes-seed0-64px --tau-s auto \
        --graphs default centre centre+whiten top8 --captions title colour-shape      (docs/studies/graph-study.md)

X-Sample's soft targets pull together images whose captions are alike; what the image encoder is
rewarded for encoding depends on what those images share. Over random training batches this measures
how each target row's mass splits by kind of partner (CLIP's targets put all of it on "self"):

- emoji data (the background question): same concept, another concept shown on the anchor's habitat,
  the rest; and how often a same-concept partner sits on the anchor's habitat. If a concept's images
  often share a habitat, the pull between same-concept images is also a pull between same-habitat
  images. Anchors: concept images on a habitat background.
- shapes data (the attribute question): same colour and shape, same shape only, same colour only,
  neither. Anchors: every image.

Graph variants (``--graphs``, as ``--xsample-graph-*`` builds them in training): ``default``, ``centre``
(mean caption subtracted), ``centre+whiten``, ``topK`` (each row's K nearest captions), and combinations
such as ``centre+top8``; the centring statistics come from all of the data's captions. Caption variants
(``--captions``): ``title`` (the data's captions) or, for shapes, ``colour-shape`` ("a red square": a
controlled variant naming only the two attributes that the unseen-pair test asks about). With
``--tau-s auto`` each variant gets the tau_s that training's ``--xsample-tau-s auto`` would choose on that
graph (self-mass ``--self-mass`` at ``--batch-size``, calibrated on all of the data's captions).
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


CAPTION_VARIANTS = {"title": lambda row: row["title"], "colour-shape": lambda row: f"a {row['colour']} {row['shape']}"}


def parse_graph(spec: str) -> dict:
    """``default``, ``centre``, ``centre+whiten``, ``topK``, or ``+``-joined parts: the graph's settings."""
    graph = {"centre": False, "whiten": False, "topk": None}
    for part in spec.split("+"):
        if part == "default":
            continue
        if part in ("centre", "whiten"):
            graph[part] = True
        elif part.startswith("top") and part[3:].isdigit():
            graph["topk"] = int(part[3:])
        else:
            raise ValueError(f"unknown graph part {part!r} in {spec!r}: use default, centre, whiten, topK")
    if graph["whiten"] and not graph["centre"]:
        raise ValueError(f"{spec!r}: whiten needs centre (centre+whiten)")
    return graph


def graph_embeddings(embeddings, graph: dict):
    """The embeddings the graph's cosine is taken of: centred (whitened) with statistics of all of them."""
    from ..losses.graph import centre_captions, centring_statistics, unit_captions

    if not graph["centre"]:
        return unit_captions(embeddings)
    mean, whitening = centring_statistics(embeddings, graph["whiten"])
    return centre_captions(embeddings.double(), mean, whitening).float()


def auto_tau(embeddings, graph: dict, self_mass: float, batch_size: int) -> float:
    """tau_s as ``--xsample-tau-s auto`` chooses it on this graph (all captions as the sample)."""
    from ..targets.calibrate import similarities_of, tau_for_self_mass, topk_similarities

    similarities = similarities_of(embeddings)
    if graph["topk"] is not None:
        similarities = topk_similarities(similarities, graph["topk"], batch_size)
    return tau_for_self_mass(similarities, self_mass, batch_size)


def mass_shares(embeddings, rows, tau_s: float, batch_size: int, batches: int, seed: int = 0,
                kind: Optional[Callable] = None, anchor: Optional[Callable] = None,
                topk: Optional[int] = None) -> Dict[str, float]:
    """Mean over anchors of the target mass per kind of partner (``self`` included; shares sum to 1).
    ``topk``: each target row keeps its K nearest captions (``--xsample-graph-topk``)."""
    from ..losses.graph import softmax_targets

    kind, anchor = kind or emoji_kind, anchor or emoji_anchor
    g = torch.Generator().manual_seed(seed)
    sums: Dict[str, float] = {"self": 0.0}
    anchors = partners = shared = 0
    for _ in range(batches):
        idx = torch.randperm(len(rows), generator=g)[:batch_size].tolist()
        target = softmax_targets(embeddings[idx], embeddings[idx], tau_s, topk=topk)
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
    p.add_argument("--tau-s", default="0.2", help="a number, or 'auto' (per graph: --self-mass at --batch-size)")
    p.add_argument("--self-mass", type=float, default=0.7)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--graphs", nargs="+", default=["default"],
                   help="graph variants: default, centre, centre+whiten, topK, e.g. centre+top8")
    p.add_argument("--captions", nargs="+", default=["title"], choices=sorted(CAPTION_VARIANTS),
                   help="caption variants (colour-shape: shapes data only)")
    args = p.parse_args(argv)
    try:
        graphs = {spec: parse_graph(spec) for spec in args.graphs}
        tau_given = None if args.tau_s == "auto" else float(args.tau_s)
    except ValueError as err:
        p.error(str(err))
    from ..targets.calibrate import UnreachableSelfMass
    from ..targets.encoders import SentenceEncoder

    encoder = SentenceEncoder("minilm")
    results = {}
    for folder in args.data:
        rows = read_rows(folder)
        data = data_kind(rows)
        kind, anchor = KINDS[data]
        for variant in args.captions:
            if variant == "colour-shape" and data != "shapes":
                p.error("--captions colour-shape needs shapes data")
            embeddings = encoder.encode([CAPTION_VARIANTS[variant](r) for r in rows]).float()
            for spec, graph in graphs.items():
                e = graph_embeddings(embeddings, graph)
                try:
                    tau = tau_given if tau_given is not None else auto_tau(e, graph, args.self_mass, args.batch_size)
                except UnreachableSelfMass as err:  # as training refuses it: no silent clamp to the bound
                    p.error(f"--tau-s auto on {Path(folder).name}, {variant} captions, graph {spec}: {err}; ask for "
                            f"another --self-mass, or give --tau-s a number (e.g. --tau-s {err.tau_s:g}, the bound)")
                shares = mass_shares(e, rows, tau, args.batch_size, args.batches, kind=kind, anchor=anchor,
                                     topk=graph["topk"])
                results[(Path(folder).name, variant, spec, tau)] = shares
    print(f"tau_s {args.tau_s}" + (f" (self-mass {args.self_mass})" if tau_given is None else "")
          + f", batches of {args.batch_size} ({args.batches} random batches); mean share of a target row by "
          "kind of partner\n")
    kinds = sorted({k for shares in results.values() for k in shares}, key=lambda k: (k != "self", k))
    print("| " + " | ".join(["data", "captions", "graph", "tau_s"] + kinds) + " |\n|---|---|---|---:|"
          + "---:|" * len(kinds))
    for (name, variant, spec, tau), shares in results.items():
        print(f"| {name} | {variant} | {spec} | {tau:.4g} | "
              + " | ".join(f"{shares.get(k, float('nan')):.3f}" for k in kinds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
