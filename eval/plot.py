"""comparison.png: one horizontal bar per run for each headline number; scores, then BG-Gaps.

Uses matplotlib's object API with the Agg canvas, so it never touches a global backend or needs a display.
"""
import math

from .report import TASK_LABELS, headline_table, metric_label

_SHORT_TASKS = {**TASK_LABELS, "zeroshot_in1k_to_in9": "1000-way→IN-9"}


def _panel(ax, items, runs, title, xlabel):
    """Grouped horizontal bars: one group per (dataset, task, metric), one bar per run, values in %."""
    height = 0.8 / len(runs)
    colors = [f"C{i}" for i in range(len(runs))]
    for g, (key, values) in enumerate(items):
        for i, run in enumerate(runs):
            value = values.get(run.name)
            if value is None or math.isnan(value):
                continue
            y = g + (i - (len(runs) - 1) / 2) * height
            ax.barh(y, 100 * value, height=height * 0.95, color=colors[i], label=run.name if g == 0 else None)
            ax.text(100 * value, y, f" {100 * value:.1f}", va="center", ha="left" if value >= 0 else "right",
                    fontsize=7)
    labels = [f"{d} · {_SHORT_TASKS.get(t, t)} · {metric_label(m).replace(' (lower is better)', '')}"
              for (d, t, m), _ in items]
    ax.set_yticks(range(len(items)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.15)


def save(path, rows, runs, model):
    """Write the chart: scores on top, BG-Gaps (lower is better) below, each group of bars one number."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = list(headline_table(rows, runs).items())
    panels = [p for p in (([i for i in table if i[0][2] != "bg_gap"], "Scores (higher is better)", "%"),
                          ([i for i in table if i[0][2] == "bg_gap"], "BG-Gap (lower is better)", "percentage points"))
              if p[0]]
    if not panels:
        panels = [([], "no results", "")]
    per_group = 0.2 * max(2, len(runs))
    sizes = [max(1, len(items)) * per_group + 0.9 for items, _, _ in panels]
    fig = Figure(figsize=(9, 0.8 + sum(sizes)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": sizes})[:, 0]
    for ax, (items, title, xlabel) in zip(axes, panels):
        _panel(ax, items, runs, title, xlabel)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", ncols=len(runs), fontsize=9)
    fig.suptitle(f"{' vs '.join(r.name for r in runs)}  ({model})", fontsize=11, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (0.8 + sum(sizes))))
    fig.savefig(path, dpi=110)
