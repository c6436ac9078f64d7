"""report.md: the headline numbers, runs as columns, each later run's difference to the first."""
import math

from .specs import IN1K_TO_IN9, LINEAR_PROBE, ZEROSHOT_CLASSIFICATION, ZEROSHOT_RETRIEVAL

TASK_LABELS = {
    ZEROSHOT_CLASSIFICATION: "zero-shot",
    ZEROSHOT_RETRIEVAL: "zero-shot retrieval",
    LINEAR_PROBE: "linear probe",
    IN1K_TO_IN9: "1000-way zero-shot mapped to IN-9",
}


def is_headline(metric):
    """Top-1 scores, retrieval recalls and BG-Gaps; the rest (acc5, per-class recall) stay in results.csv."""
    return (metric in ("acc1", "lp_acc1", "mean_average_precision", "bg_gap")
            or metric.startswith(("image_retrieval_recall@", "text_retrieval_recall@")))


def metric_label(metric):
    labels = {"acc1": "top-1", "lp_acc1": "top-1", "mean_average_precision": "mAP",
              "bg_gap": "BG-Gap (lower is better)"}
    if metric in labels:
        return labels[metric]
    # clip_benchmark's "image_retrieval" finds images for a caption (text→image), "text_retrieval" the reverse.
    retrieved, _, k = metric.partition("_retrieval_recall@")
    return f"{'text→image' if retrieved == 'image' else 'image→text'} R@{k}" if k else metric


def headline_table(rows, runs):
    """{(dataset, task, metric): {run: value}} for the headline metrics, in the order rows came."""
    table = {}
    for row in rows:
        if is_headline(row["metric"]):
            table.setdefault((row["dataset"], row["task"], row["metric"]), {})[row["run"]] = row["value"]
    return table


def _pct(value, signed=False):
    if value is None or math.isnan(value):
        return "–"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def render(rows, runs, model, notes=(), title="Comparison"):
    """The Markdown text of report.md."""
    first, others = runs[0].name, [r.name for r in runs[1:]]
    lines = [f"# {title}: {' vs '.join(r.name for r in runs)}", "",
             f"Model `{model}`; runs: " + ", ".join(f"`{r.name}` = `{r.checkpoint}`" for r in runs) + ".", "",
             f"Values are percentages; Δ columns are percentage points relative to the first run (`{first}`). "
             "BG-Gap = top-1(mixed_same) − top-1(mixed_rand) on the same task: lower means the model relies less "
             "on backgrounds.", ""]
    header = ["dataset", "task", "metric", *[r.name for r in runs], *[f"Δ {o} − {first}" for o in others]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for (dataset, task, metric), values in headline_table(rows, runs).items():
        cells = [dataset, TASK_LABELS.get(task, task), metric_label(metric)]
        cells += [_pct(values.get(r.name)) for r in runs]
        base = values.get(first)
        cells += [_pct(values[o] - base if o in values and base is not None else None, signed=True) for o in others]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "All metrics (acc5, mean per-class recall, ...) are in `results.csv`; the clip_benchmark result "
              "JSONs are under `results/<run>/`."]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
