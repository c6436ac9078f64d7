"""Probe accuracy against training-data size, from the paper family's per-seed files of several fractions.

    python -m xsample_openclip.demo.datasize OUT [--split test] [--losses clip xclr] [--out FILE.png]
    python -m xsample_openclip.demo.datasize 0.25=a.csv 0.5=b.csv 1=c.csv          # committed per-seed files

An OUT folder contributes every ``paper-<split>[-fF].json`` that ``--family paper --data-fraction F`` wrote
there (its fraction, training-image count and per-seed CSV); ``F=CSV`` names a per-seed file and its
fraction directly. One line per loss (the paper's Fig. 3a in small): mean over seeds, whiskers the
standard deviation; the points are also printed as a table, followed by each loss's paired difference to
the first loss (``--losses``' baseline, CLIP by default) per fraction with its 95 % confidence interval
over the seeds both have: the paper's "more so with less data" is a statement about that difference.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .stats import mean_ci, mean_std
from .tables import read_per_seed

COLUMN = "linear probe top-1, 10 concepts"

Point = Tuple[float, int, Path]  # fraction, training images (0 = unknown), per-seed CSV


def points_of(sources: Sequence[str], split: str) -> List[Point]:
    """The (fraction, images, per-seed CSV) of every source: OUT folders or ``F=CSV``, sorted by fraction."""
    found = []
    for source in sources:
        fraction, sep, path = source.partition("=")
        if sep:
            found.append((float(fraction), 0, Path(path)))
            continue
        records = sorted(Path(source).glob(f"paper-{split}.json")) + sorted(Path(source).glob(f"paper-{split}-f*.json"))
        if not records:
            raise ValueError(f"{source}: no paper-{split}*.json; run python -m xsample_openclip.demo --family paper "
                             f"--split {split} --out {source} first, or pass FRACTION=PER_SEED_CSV")
        for record in records:
            info = json.loads(record.read_text())
            found.append((float(info["data_fraction"]), int(info["train_images"]), record.parent / info["per_seed_csv"]))
    fractions = [f for f, _, _ in found]
    if len(set(fractions)) != len(fractions):
        raise ValueError(f"the same data fraction twice among {sorted(fractions)}: give each fraction once")
    return sorted(found)


def curves(points: Sequence[Point], losses: Sequence[str], column: str = COLUMN) -> Dict[str, List[tuple]]:
    """loss -> [(fraction, images, mean, std, seeds)] over the points where the loss has values."""
    out = {loss: [] for loss in losses}
    for fraction, images, path in points:
        _, _, columns = read_per_seed([path])
        if column not in columns:
            raise ValueError(f"{path} has no column {column!r}; columns: {', '.join(columns)}")
        for loss in losses:
            values = list(columns[column].get(loss, {}).values())
            if values:
                mean, std = mean_std(values)
                out[loss].append((fraction, images, mean, std, len(values)))
    missing = [loss for loss, pts in out.items() if not pts]
    if missing:
        raise ValueError(f"no values of {', '.join(missing)} in {column!r} of any file")
    return out


def paired_gaps(points: Sequence[Point], losses: Sequence[str], column: str = COLUMN) -> Dict[str, List[tuple]]:
    """loss -> [(fraction, mean Δ, 95 % CI or None, seeds)]: Δ = loss − losses[0], paired by seed."""
    baseline, out = losses[0], {loss: [] for loss in losses[1:]}
    for fraction, _, path in points:
        values = read_per_seed([path])[2].get(column, {})
        base = values.get(baseline, {})
        for loss in out:
            deltas = [v - base[seed] for seed, v in sorted(values.get(loss, {}).items()) if seed in base]
            if deltas:
                out[loss].append((fraction, mean_std(deltas)[0], mean_ci(deltas), len(deltas)))
    return out


def gap_table(gaps: Dict[str, List[tuple]], baseline: str) -> str:
    fractions = sorted({f for pts in gaps.values() for f, *_ in pts})
    lines = ["| data fraction | " + " | ".join(f"Δ {loss} − {baseline} [95 % CI]" for loss in gaps) + " |",
             "|---|" + "---:|" * len(gaps)]
    for fraction in fractions:
        cells = []
        for pts in gaps.values():
            hit = [p for p in pts if p[0] == fraction]
            if not hit:
                cells.append("n/a")
                continue
            _, delta, ci, n = hit[0]
            cells.append(f"{delta:+.1f}" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "") + f" (n={n})")
        lines.append(f"| {fraction:g} | " + " | ".join(cells) + " |")
    return "paired by seed:\n" + "\n".join(lines)


def plot(path, data: Dict[str, List[tuple]], column: str, title: str) -> Path:
    from .plots import _figure

    fig = _figure(6, 4)
    ax = fig.subplots()
    for i, (loss, pts) in enumerate(data.items()):
        xs = [100 * f for f, *_ in pts]
        ax.errorbar(xs, [m for _, _, m, _, _ in pts], yerr=[s for _, _, _, s, _ in pts], marker="o", capsize=3,
                    color=f"C{i}", label=f"{loss} ({max(n for *_, n in pts)} seeds)")
    ax.set_xlabel("training images used (% of the training set)")
    ax.set_ylabel(f"{column} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def table(data: Dict[str, List[tuple]], column: str) -> str:
    lines = [f"| data fraction (images) | " + " | ".join(data) + " |", "|---|" + "---:|" * len(data)]
    fractions = sorted({(f, n) for pts in data.values() for f, n, *_ in pts})
    for fraction, images in fractions:
        cells = []
        for pts in data.values():
            hit = [p for p in pts if p[0] == fraction]
            cells.append(f"{hit[0][2]:.1f} ± {hit[0][3]:.1f} (n={hit[0][4]})" if hit else "n/a")
        lines.append(f"| {fraction:g}" + (f" ({images})" if images else "") + " | " + " | ".join(cells) + " |")
    return f"{column}, mean ± std over seeds:\n" + "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.demo.datasize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", help="paper-family OUT folders, or FRACTION=PER_SEED_CSV")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--losses", nargs="+", default=["clip", "xclr"])
    p.add_argument("--column", default=COLUMN, help="the per-seed column to plot")
    p.add_argument("--out", default=None, help="the PNG (default: datasize-SPLIT.png in the first OUT folder, or here)")
    args = p.parse_args(argv)
    try:
        data = curves(points_of(args.sources, args.split), args.losses, args.column)
    except (ValueError, OSError) as err:
        p.exit(2, f"{p.prog}: error: {err}\n")
    first = Path(args.sources[0])
    out = args.out or (first / f"datasize-{args.split}.png" if first.is_dir() else f"datasize-{args.split}.png")
    print(table(data, args.column))
    if len(args.losses) > 1:
        print("\n" + gap_table(paired_gaps(points_of(args.sources, args.split), args.losses, args.column),
                               args.losses[0]))
    print(f"\nplot: {plot(out, data, args.column, f'probe accuracy against data size ({args.split} split)')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
