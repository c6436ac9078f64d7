"""Seeds aggregated per loss: mean +- std, and the paired difference to the baseline per seed.

Runs are named ``LOSS-sSEED``; every loss is trained once per seed with the same data order (the CSV
loader is bit-reproducible for a seed), so ``LOSS-sK`` minus ``BASELINE-sK`` is a paired difference:
its spread over seeds, next to the losses' own spread, and its 95 % confidence interval (Student's t over
seeds) show whether a gain exceeds the seed noise. Next to the summary goes the per-seed file
(``tables``: one row per run, every number of the table) from which the table can be regenerated.
"""
from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence

from .stats import mean_ci, mean_std


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


def fmt(mean, std, n, sign=False):
    if mean is None:
        return "n/a"
    head = f"{mean:+.1f}" if sign else f"{mean:.1f}"
    return head if n < 2 else f"{head} ± {std:.1f}"


def paired(values: Dict[int, float], base: Dict[int, float]) -> Dict[int, float]:
    return {seed: values[seed] - base[seed] for seed in sorted(values) if seed in base}


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


def paired_cell(deltas: Sequence[float], n: int) -> str:
    """Mean ± std of the paired differences and, from two seeds on, their 95 % confidence interval."""
    cell = fmt(*mean_std(deltas), n, sign=True)
    ci = mean_ci(deltas)
    return cell if ci is None else f"{cell} [{ci[0]:+.1f}, {ci[1]:+.1f}]"


def markdown(rows, losses: Sequence[str], seeds: Sequence[int], header: Sequence[str] = ()) -> str:
    """The table: mean ± std per loss, paired Δ to ``losses[0]`` (mean ± std [95 % CI]), per-seed Δ."""
    n = len(seeds)
    head = [f"| metric (%; {n} seed{'s' if n > 1 else ''}: {', '.join(map(str, seeds))}) | "
            + " | ".join(losses) + " | "
            + " | ".join(f"Δ {v} − {losses[0]}, paired [95 % CI]" for v in losses[1:])
            + " | " + " | ".join(f"Δ per seed ({v})" for v in losses[1:]) + " |",
            "|---|" + "---:|" * (len(losses) + 2 * (len(losses) - 1))]
    for row in rows:
        if not any(row["values"].values()):
            continue
        cells = [fmt(*mean_std(list(row["values"][loss].values())), n) for loss in losses]
        deltas = [paired_cell(list(row["paired"][loss].values()), n) for loss in losses[1:]]
        per_seed = [", ".join(f"{d:+.1f}" for d in row["paired"][loss].values()) or "n/a" for loss in losses[1:]]
        label = row["label"] + (" (lower is better)" if row["lower_is_better"] else "")
        head.append(f"| {label} | " + " | ".join(cells + deltas + per_seed) + " |")
    return "\n".join(list(header) + ([""] if header else []) + head)


def summarize(results_csv, out_dir, losses, headline, split, primary, seeds, header=(), name=None):
    """Write summary-<name>.md, .json and the per-seed summary-<name>-per-seed.csv under ``out_dir``
    (name: the split by default); return the markdown table and the rows."""
    from .tables import write_per_seed

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
