"""The per-seed file behind a results table, and the table regenerated from it alone.

    python -m xsample_openclip.demo.tables docs/studies/results/emoji-test.csv    # print the markdown table
    python -m xsample_openclip.demo.tables A.csv B.csv                             # one table from two studies
    python -m xsample_openclip.demo.tables --from-summary OUT/summary-test.json --write x.csv

The demo writes ``OUT/summary-<split>-per-seed.csv`` next to its summary: one row per run (``run``,
``loss``, ``seed``), one column per number of the table, in %, at full precision (a column whose name
ends in "(lower is better)" is such a number). It is small enough to keep next to a report (the
studies' files are in ``docs/studies/results/``), so that a reader can recompute each table (mean ± std per loss, the paired Δ to the
baseline with its 95 % confidence interval over seeds, the per-seed Δ) without training anything. The
baseline is the first loss in the file (``--baseline`` names another); several files are merged by
(loss, seed), and a run present twice must carry the same numbers.

This module owns the file's format (``write_per_seed``, ``read_per_seed``) and the table's layout
(``markdown``); the demo's summary (``summary``, from results.csv) writes both through it.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .stats import mean_ci, mean_std

LOWER = " (lower is better)"
KEYS = ("run", "loss", "seed")


def column(row: dict) -> str:
    return row["label"] + (LOWER if row["lower_is_better"] else "")


def write_per_seed(path, rows: Sequence[dict], losses: Sequence[str], seeds: Sequence[int]) -> Path:
    """One line per (loss, seed) with every row's value (empty where there is none)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*KEYS, *(column(r) for r in rows)])
        for loss in losses:
            for seed in seeds:
                values = [r["values"].get(loss, {}).get(seed) for r in rows]
                writer.writerow([f"{loss}-s{seed}", loss, seed, *("" if v is None else repr(v) for v in values)])
    return path


def fmt(mean, std, n, sign=False):
    if mean is None:
        return "n/a"
    head = f"{mean:+.1f}" if sign else f"{mean:.1f}"
    return head if n < 2 else f"{head} ± {std:.1f}"


def paired(values: Dict[int, float], base: Dict[int, float]) -> Dict[int, float]:
    return {seed: values[seed] - base[seed] for seed in sorted(values) if seed in base}


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
        head.append(f"| {column(row)} | " + " | ".join(cells + deltas + per_seed) + " |")
    return "\n".join(list(header) + ([""] if header else []) + head)


Table = Tuple[List[str], List[int], Dict[str, Dict[str, Dict[int, float]]]]  # losses, seeds, column -> values


def read_per_seed(paths: Sequence) -> Table:
    """(losses in order of appearance, seeds, {column: {loss: {seed: value}}}) of one or more files."""
    losses: List[str] = []
    seeds = set()
    columns: Dict[str, Dict[str, Dict[int, float]]] = {}
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [k for k in KEYS if k not in (reader.fieldnames or ())]
            if missing:
                raise ValueError(f"{path}: no column {', '.join(missing)}; a per-seed file starts with "
                                 f"{', '.join(KEYS)} (written by python -m xsample_openclip.demo)")
            names = [c for c in reader.fieldnames if c not in KEYS]
            for name in names:
                columns.setdefault(name, {})
            for line in reader:
                loss, seed = line["loss"], int(line["seed"])
                if loss not in losses:
                    losses.append(loss)
                seeds.add(seed)
                for name in names:
                    _put(columns[name].setdefault(loss, {}), seed, line[name], f"{path}: {name}, {loss}-s{seed}")
    return losses, sorted(seeds), columns


def _put(values: Dict[int, float], seed: int, text: str, where: str):
    if text == "":
        return
    value = float(text)
    if seed in values and values[seed] != value:
        raise ValueError(f"{where}: {value} here but {values[seed]} in an earlier file; merge only files "
                         "whose shared runs are the same runs")
    values[seed] = value


def table_rows(losses: Sequence[str], columns: Dict[str, Dict[str, Dict[int, float]]]) -> List[dict]:
    """The summary's rows (per loss {seed: value}, paired differences to ``losses[0]``)."""
    rows = []
    for name, per_loss in columns.items():
        label = name[:-len(LOWER)] if name.endswith(LOWER) else name
        values = {loss: dict(sorted(per_loss.get(loss, {}).items())) for loss in losses}
        base = values[losses[0]]
        rows.append({"label": label, "lower_is_better": name.endswith(LOWER), "values": values,
                     "paired": {loss: paired(values[loss], base) for loss in losses[1:]}})
    return rows


def regenerate(paths: Sequence, baseline: str = None) -> str:
    """The markdown table of one or more per-seed files."""
    losses, seeds, columns = read_per_seed(paths)
    if baseline is not None:
        if baseline not in losses:
            raise ValueError(f"--baseline {baseline}: the files hold the losses {', '.join(losses)}")
        losses = [baseline] + [loss for loss in losses if loss != baseline]
    return markdown(table_rows(losses, columns), losses, seeds)


def from_summary_json(summary_json, out_csv) -> Path:
    """The per-seed file of a demo's ``summary-<split>.json`` (for summaries written before this file)."""
    summary = json.loads(Path(summary_json).read_text())
    rows = [{**r, "values": {loss: {int(s): v for s, v in d.items()} for loss, d in r["values"].items()}}
            for r in summary["rows"]]
    return write_per_seed(out_csv, rows, summary["losses"], summary["seeds"])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.demo.tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="per-seed CSV files (summary-<split>-per-seed.csv)")
    p.add_argument("--baseline", help="the loss the paired differences are taken to (default: the first)")
    p.add_argument("--from-summary", help="convert a demo's summary-<split>.json into a per-seed file")
    p.add_argument("--write", help="with --from-summary: the per-seed CSV to write")
    args = p.parse_args(argv)
    if args.from_summary:
        if not args.write:
            p.error("--from-summary needs --write PATH (the per-seed CSV to write)")
        args.files = [str(from_summary_json(args.from_summary, args.write))] + args.files
    if not args.files:
        p.error("give at least one per-seed CSV file (or --from-summary)")
    print(regenerate(args.files, args.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
