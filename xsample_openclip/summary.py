"""Mean +- std over seeds of the demo's headline metrics, per loss, from eval.compare's results.csv."""
import csv
import statistics
from collections import defaultdict
from pathlib import Path

#: (dataset, metric) pairs of the headline table, in print order, with their labels.
HEADLINE = (
    ("emoji_cls", "acc1", "zero-shot top-1, 10 concepts"),
    ("emoji_cls", "acc5", "zero-shot top-5"),
    ("emoji_ret", "image_retrieval_recall@1", "text-to-image retrieval R@1"),
    ("emoji_ret", "image_retrieval_recall@5", "text-to-image retrieval R@5"),
    ("emoji_ret", "text_retrieval_recall@1", "image-to-text retrieval R@1"),
    ("emoji_ret", "text_retrieval_recall@5", "image-to-text retrieval R@5"),
    ("emoji_bg_original", "acc1", "backgrounds: original, top-1"),
    ("emoji_bg_mixed_same", "acc1", "backgrounds: mixed_same, top-1"),
    ("emoji_bg_mixed_rand", "acc1", "backgrounds: mixed_rand, top-1"),
    ("emoji_bg_only_fg", "acc1", "backgrounds: only_fg, top-1"),
    ("emoji_bg", "bg_gap", "BG-Gap = same - rand (lower is better)"),
)


def loss_of(run_name: str) -> str:
    """Runs are named LOSS-sSEED."""
    return run_name.rsplit("-s", 1)[0]


def collect(results_csv):
    values = defaultdict(list)  # (loss, dataset, metric) -> values over seeds
    with open(results_csv) as f:
        for row in csv.DictReader(f):
            values[(loss_of(row["run"]), row["dataset"], row["metric"])].append(100 * float(row["value"]))
    return values


def _fmt(vals):
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def summarize(results_csv, out_md, settings=None, variants=(), seeds=(0,)):
    """Write and return a markdown table: a row per headline metric, a column per loss (stock CLIP
    first), and each X-Sample variant's difference to CLIP."""
    values = collect(results_csv)
    names = ["clip"] + [name for name, _ in variants]
    n = len(seeds)
    lines = [f"| metric (%, {n} seed{'s' if n > 1 else ''}) | " + " | ".join(names) + " | "
             + " | ".join(f"Δ {v} − clip" for v in names[1:]) + " |",
             "|---|" + "---:|" * (2 * len(names) - 1)]
    for dataset, metric, label in HEADLINE:
        cols = [values.get((name, dataset, metric), []) for name in names]
        if not any(cols):
            continue
        deltas = [f"{statistics.mean(c) - statistics.mean(cols[0]):+.1f}" if c and cols[0] else "n/a"
                  for c in cols[1:]]
        lines.append(f"| {label} | " + " | ".join(_fmt(c) for c in cols) + " | " + " | ".join(deltas) + " |")
    header = []
    if settings is not None:
        header.append(f"model {settings.model}, {settings.epochs} epochs, batch {settings.batch_size}, "
                      f"lr {settings.lr}, wd {settings.wd}, warmup {settings.warmup}; seeds {list(seeds)}")
    header += [f"{name}: --loss xsample {' '.join(flags)}" for name, flags in variants]
    table = "\n".join(header + [""] + lines)
    Path(out_md).write_text(table + "\n")
    return table
