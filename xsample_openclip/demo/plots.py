"""The demo's two figures: headline numbers per loss (mean over seeds, error bars = std), and the
training-loss curves of every run. matplotlib's object API with the Agg canvas: no display needed."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, Sequence


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def comparison(path, rows, losses: Sequence[str], title: str) -> Path:
    """Grouped horizontal bars: one group per headline number, one bar per loss (mean, std whiskers)."""
    rows = [r for r in rows if any(r["values"].values())]
    fig = _figure(9, 1.0 + 0.28 * max(1, len(rows)) * max(2, len(losses)))
    ax = fig.subplots()
    height = 0.8 / len(losses)
    for i, loss in enumerate(losses):
        for g, row in enumerate(rows):
            vals = list(row["values"].get(loss, {}).values())
            if not vals:
                continue
            mean = statistics.mean(vals)
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            y = g + (i - (len(losses) - 1) / 2) * height
            ax.barh(y, mean, height=height * 0.9, xerr=std, color=f"C{i}", capsize=2,
                    label=f"{loss} ({len(vals)} seed{'s' if len(vals) > 1 else ''})" if g == 0 else None)
            ax.text(max(mean + std, 0), y, f" {mean:.1f}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [r["label"] + (" ↓" if r["lower_is_better"] else "") for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% (mean over seeds; whiskers: standard deviation; ↓ lower is better)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def loss_curves(path, curves: Dict[str, Dict[int, tuple]], title: str) -> Path:
    """``curves``: loss -> seed -> (epochs, losses). One panel per loss; a line per seed."""
    losses = list(curves)
    cols = min(4, len(losses))
    rows = -(-len(losses) // cols)
    fig = _figure(4.2 * cols, 3.2 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(losses):]:
        ax.set_visible(False)
    for ax, loss in zip(axes, losses):
        for seed, (xs, ys) in sorted(curves[loss].items()):
            ax.plot(xs, ys, linewidth=1, label=f"seed {seed}")
        ax.set_title(loss, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("training loss (as logged)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
