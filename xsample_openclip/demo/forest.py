"""One figure of paired differences from committed per-seed files: for each chosen row, the mean paired Δ
(a loss minus the file's baseline, per seed) with its 95 % confidence interval and the per-seed Δ as dots;
green where the interval says the loss is better (for a "lower is better" column: below 0), red where worse.

    python -m xsample_openclip.demo.forest --out verdict.png \\
        --row "emoji: zero-shot top-1" docs/studies/results/graph-test-emoji.csv "zero-shot top-1" \\
        --row "shapes: unseen pairs" docs/studies/results/graph-test-shapes.csv "primary:"

It reads the same per-seed files the tables come back from (``demo.tables``), so the figure shows the
numbers of the tables and nothing else: a row's COLUMN is the first column of the file that starts with
it, and the loss compared is the file's only other loss (``--loss`` names one when there are several).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

from .stats import mean_ci
from .tables import LOWER, read_per_seed


class Paired(NamedTuple):
    label: str
    mean: float
    low: float
    high: float
    per_seed: List[float]
    lower_is_better: bool


def paired_row(label: str, path, column: str, loss: Optional[str] = None) -> Paired:
    losses, _, columns = read_per_seed([path])
    name = next((c for c in columns if c.startswith(column)), None)
    if name is None:
        raise ValueError(f"{path}: no column starts with {column!r}; columns: {', '.join(columns)}")
    others = losses[1:] if loss is None else [loss]
    if len(others) != 1 or others[0] not in losses[1:]:
        raise ValueError(f"{path}: name the loss to compare with --loss, one of {', '.join(losses[1:])}")
    base, other = columns[name][losses[0]], columns[name][others[0]]
    deltas = [other[s] - base[s] for s in sorted(base) if s in other]
    ci = mean_ci(deltas)
    if ci is None:
        raise ValueError(f"{path}: {name}: a confidence interval needs two seeds with both losses")
    return Paired(label, statistics.mean(deltas), ci[0], ci[1], deltas, name.endswith(LOWER))


def plot(path, rows: Sequence[Paired], title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.9 + 0.45 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for y, row in enumerate(rows):
        gain, loss = (row.high < 0, row.low > 0) if row.lower_is_better else (row.low > 0, row.high < 0)
        colour = "C2" if gain else "C3" if loss else "C7"  # green: X-Sample better, red: worse, grey: neither
        ax.plot([row.low, row.high], [y, y], color=colour, linewidth=2)
        ax.plot([row.mean], [y], "o", color=colour)
        ax.plot(row.per_seed, [y + 0.18] * len(row.per_seed), ".", color="k", alpha=0.4, markersize=4)
        ax.text(max(row.high, 0), y, f"  {row.mean:+.1f} [{row.low:+.1f}, {row.high:+.1f}]", va="center",
                fontsize=8)
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("paired Δ, percentage points (dot: mean; bar: 95 % CI over seeds; small dots: seeds)",
                  fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.demo.forest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", nargs=3, action="append", required=True, metavar=("LABEL", "FILE", "COLUMN"),
                   help="a row of the figure: its label, a per-seed file, the start of one of its columns")
    p.add_argument("--loss", help="the loss compared with the baseline, when a file has several")
    p.add_argument("--title", default="X-Sample − CLIP, paired by seed")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args(argv)
    rows = [paired_row(label, path, column, args.loss) for label, path, column in args.row]
    for row in rows:
        print(f"{row.label}: {row.mean:+.1f} [{row.low:+.1f}, {row.high:+.1f}]")
    print(f"wrote {plot(args.out, rows, args.title)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
