"""Flatten result JSONs into rows (run x dataset x task x metric), add BG-Gaps, write results.csv."""
import csv
import math
import re

from .benchmark import read_result
from .specs import BgGap

#: Entries of clip_benchmark's linear-probe metrics that are settings, not scores.
_SETTINGS = {"epochs", "seed", "fewshot_k", "normalized", "weight_decay"}

CSV_FIELDS = ("run", "model", "checkpoint", "dataset", "task", "metric", "value")


def slug(name):
    """A dataset name as a file-name part (``in9/mixed_rand`` -> ``in9-mixed_rand``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("/", "-"))


def metric_rows(path, run, dataset, task):
    """The numeric metrics of one result JSON as rows."""
    metrics = read_result(path)["metrics"]
    return [dict(run=run, dataset=dataset, task=task, metric=k, value=float(v)) for k, v in metrics.items()
            if k not in _SETTINGS and isinstance(v, (int, float)) and not isinstance(v, bool)]


def auto_bg_gaps(specs):
    """A BG-Gap for every dataset group that has both a ``mixed_same`` and a ``mixed_rand`` variant."""
    names = {s.name for s in specs}
    groups = dict.fromkeys(s.group for s in specs if s.group)
    return [BgGap(g, f"{g}/mixed_same", f"{g}/mixed_rand") for g in groups
            if f"{g}/mixed_same" in names and f"{g}/mixed_rand" in names]


def bg_gap_rows(rows, gaps):
    """BG-Gap = top-1(same) - top-1(rand) per run and task, from rows already read."""
    top1 = {(r["run"], r["dataset"], r["task"]): r["value"] for r in rows if r["metric"] in ("acc1", "lp_acc1")}
    out = []
    for gap in gaps:
        for (run, dataset, task), same in top1.items():
            rand = top1.get((run, gap.rand, task))
            if dataset == gap.same and rand is not None:
                out.append(dict(run=run, dataset=gap.label, task=task, metric="bg_gap", value=same - rand))
    return out


def write_csv(path, rows, model, checkpoints):
    """results.csv: one row per run x dataset x task x metric; values as fractions (0.5 = 50 %)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            value = "nan" if math.isnan(row["value"]) else repr(row["value"])
            writer.writerow({**row, "model": model, "checkpoint": checkpoints[row["run"]], "value": value})
