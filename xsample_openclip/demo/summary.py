"""Seeds aggregated per loss: mean +- std, and the paired difference to the baseline per seed.

Runs are named ``LOSS-sSEED``; every loss is trained once per seed with the same data order (the CSV
loader is bit-reproducible for a seed), so ``LOSS-sK`` minus ``BASELINE-sK`` is a paired difference:
its spread over seeds, next to the losses' own spread, and its 95 % confidence interval (Student's t over
seeds) show whether a gain exceeds the seed noise. Next to the summary goes the per-seed file
(``tables``: one row per run, every number of the table) from which the table can be regenerated;
``tables`` owns that file's format and the table's layout, and this module uses both.
"""
from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence

from .stats import mean_std
from .tables import markdown, paired, write_per_seed


def split_run(run_name: str):
    """(loss, seed) of ``LOSS-sSEED``."""
    loss, _, seed = run_name.rpartition("-s")
    return loss, int(seed)


def collect(results_csv) -> Dict[tuple, Dict[int, float]]:
    """(loss, dataset, metric, task) -> {seed: value in %}; also (loss, dataset, metric) for the zero-shot
    tasks (a BG-Gap row is ``bg_gap`` for the zero-shot and the linear-probe task alike: only the task
    tells them apart)."""
    values = defaultdict(dict)
    with open(results_csv) as f:
        for row in csv.DictReader(f):
            loss, seed = split_run(row["run"])
            value = 100 * float(row["value"])
            task = row.get("task") or ""  # results written before eval.compare recorded the task have none
            values[(loss, row["dataset"], row["metric"], task)][seed] = value
            if task != "linear_probe":
                values[(loss, row["dataset"], row["metric"])][seed] = value
    return values


def summary_rows(values, losses: Sequence[str], headline, split: str, primary: Sequence[str]):
    """One dict per headline number (plus the primary score): per loss {seed: value}, per variant the
    paired differences to the first loss."""
    rows = []
    for h in headline:
        key = (h.at(split), h.metric) + ((h.task,) if h.task else ())
        per_loss = {loss: values.get((loss, *key), {}) for loss in losses}
        rows.append({"label": h.label, "lower_is_better": h.lower_is_better, "values": per_loss})
    by_label = {r["label"]: r for r in rows}
    parts = [by_label[label] for label in primary if label in by_label]
    if len(parts) > 1:
        combined = {loss: {seed: statistics.mean(p["values"][loss][seed] for p in parts)
                           for seed in parts[0]["values"][loss] if all(seed in p["values"][loss] for p in parts)}
                    for loss in losses}
        rows.insert(0, {"label": "primary: mean of " + " and ".join(primary), "lower_is_better": False,
                        "values": combined})
    for row in rows:
        base = row["values"].get(losses[0], {})
        row["paired"] = {loss: paired(row["values"][loss], base) for loss in losses[1:]}
    return rows


def summarize(results_csv, out_dir, losses, headline, split, primary, seeds, header=(), name=None):
    """Write summary-<name>.md, .json and the per-seed summary-<name>-per-seed.csv under ``out_dir``
    (name: the split by default); return the markdown table and the rows."""
    rows = summary_rows(collect(results_csv), losses, headline, split, primary)
    table = markdown(rows, losses, seeds, header)
    out_dir = Path(out_dir)
    name = name or split
    (out_dir / f"summary-{name}.md").write_text(table + "\n")
    (out_dir / f"summary-{name}.json").write_text(json.dumps(
        {"split": split, "losses": list(losses), "seeds": list(seeds), "header": list(header),
         "rows": [{**r, "values": {k: {str(s): v for s, v in d.items()} for k, d in r["values"].items()},
                   "paired": {k: {str(s): v for s, v in d.items()} for k, d in r["paired"].items()}}
                  for r in rows]}, indent=1) + "\n")
    write_per_seed(out_dir / f"summary-{name}-per-seed.csv", rows, losses, seeds)
    return table, rows


def primary_score(rows: List[dict], loss: str):
    """Mean over seeds of the first row (the primary number) for ``loss``."""
    return mean_std(list(rows[0]["values"].get(loss, {}).values()))[0] if rows else None
