"""Compare CLIP checkpoints (e.g. stock CLIP vs ``--loss xsample``) on the benchmarks of the X-CLR paper.

    python -m eval.compare --model MODEL --run clip=PATH/epoch_N.pt --run xsample=PATH/epoch_N.pt \\
        --imagenet-root DIR --in9-root DIR --tasks zeroshot,linear_probe --out DIR

Every evaluation is clip_benchmark 1.6.2 run in this process (the linear probe through ``linear_probe``,
its protocol without its CUDA-only lines, so it runs on a CPU too); this module only plans them, skips the ones
whose result JSON exists for the same checkpoint content (``checkpoints``), set content and task settings
(``inputs``), and summarises (results.csv, report.md, comparison.png). ``compare()`` is the same thing as a Python API, for any list of DatasetSpecs
(e.g. custom ``wds/`` sets).
"""
import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import List

from . import checkpoints, inputs, models, plot, report, results, runner
from .benchmark import device_and_amp
from .layouts import attach_probe_train, imagenet_specs, in9_specs, wds_specs  # noqa: F401  (the API)
from .linear_probe import ProbeSettings, check_clip_benchmark
from .specs import (LINEAR_PROBE, TASK_GROUPS, BgGap, DatasetSpec, Run, SetupError, check_name,  # noqa: F401
                    parse_bg_gap, parse_named_dir, parse_run, parse_tasks)

log = logging.getLogger(f"{__package__}.compare")  # not "__main__" under python -m

_ALL_TASKS = {t for group in TASK_GROUPS.values() for t in group}


@dataclass
class Comparison:
    """What ``compare`` produced: the result rows, notes on what was skipped, and the files written."""

    out: str
    rows: List[dict]
    notes: List[str] = field(default_factory=list)

    @property
    def csv(self):
        return os.path.join(self.out, "results.csv")

    @property
    def report(self):
        return os.path.join(self.out, "report.md")

    @property
    def plot(self):
        return os.path.join(self.out, "comparison.png")

    def value(self, run, dataset, task, metric):
        """One number from the rows (KeyError if absent), e.g. value('xsample', 'in9', task, 'bg_gap')."""
        for r in self.rows:
            if (r["run"], r["dataset"], r["task"], r["metric"]) == (run, dataset, task, metric):
                return r["value"]
        raise KeyError((run, dataset, task, metric))


def _as_runs(runs):
    runs = [Run(k, str(v)) for k, v in runs.items()] if isinstance(runs, dict) else list(runs)
    for run in runs:
        check_name(run.name, "run")
    if not runs:
        raise SetupError("no run given: pass at least one --run NAME=CHECKPOINT")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise SetupError(f"run names must be unique, got {names}")
    return runs


def _as_tasks(tasks):
    if isinstance(tasks, str) or all(t in TASK_GROUPS for t in tasks):
        return parse_tasks(tasks)
    unknown = [t for t in tasks if t not in _ALL_TASKS]
    if unknown:
        raise SetupError(f"unknown tasks {unknown}; use {sorted(TASK_GROUPS)} or {sorted(_ALL_TASKS)}")
    return tuple(tasks)


def _check_datasets(datasets, bg_gaps):
    if not datasets:
        raise SetupError("no dataset to evaluate: give --imagenet-root, --in9-root or --wds NAME=DIR")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise SetupError(f"dataset names must be unique, got {names}")
    for gap in bg_gaps:
        for name in (gap.same, gap.rand):
            if name not in names:
                raise SetupError(f"--bg-gap {gap.label}: no dataset named {name!r} (datasets: {', '.join(names)})")


def _record_runs(out, records, stale, notes):
    """Drop the files of the runs ``checkpoints.check`` found stale, saying so in the log and in ``notes``,
    then save the new records (in this order, so an interruption cannot leave stale files recorded as new)."""
    for run, reason in stale:
        if runner.forget(out, run.name):
            note = f"{run.name}: {reason}; its evaluations were recomputed"
            log.warning(note)
            notes.append(note)
    checkpoints.save(out, records)


def _check_unchanged(records, runs, notes):
    """Note runs whose checkpoint file changed on disk while being evaluated (e.g. a training job still
    saving ``epoch_latest.pt``): their results may mix versions, and the next run recomputes them."""
    for run in runs:
        if checkpoints.changed_since(records[run.name]["identity"], run.checkpoint):
            note = (f"{run.name}: checkpoint {run.checkpoint} changed while it was being evaluated, so its results "
                    "may mix two versions; run again with the same --out to recompute them")
            log.warning(note)
            notes.append(note)


def _collect_rows(plan, datasets, runs, gaps):
    """Rows grouped for reading: per dataset block (a group such as IN-9, or one set), then task, dataset,
    run; a block's BG-Gaps right after it, the other BG-Gaps at the end."""
    blocks = list(dict.fromkeys(d.group or d.name for d in datasets))
    task_order = {t: i for i, t in enumerate(dict.fromkeys(e.task for e in plan))}

    def key(e):
        return (blocks.index(e.spec.group or e.spec.name), task_order[e.task], datasets.index(e.spec),
                runs.index(e.run))

    by_block = {b: [] for b in blocks}
    for e in sorted(plan, key=key):
        by_block[e.spec.group or e.spec.name] += results.metric_rows(e.output, e.run.name, e.spec.name, e.task)
    gap_rows = results.bg_gap_rows([r for rows in by_block.values() for r in rows], gaps)
    rows = []
    for block, block_rows in by_block.items():
        rows += block_rows + [r for r in gap_rows if r["dataset"] == block]
    return rows + [r for r in gap_rows if r["dataset"] not in by_block]


def compare(model, runs, datasets, tasks=("zeroshot",), out="eval-results", bg_gaps=(), batch_size=64,
            num_workers=4, amp=None, recall_k=(1, 5, 10), notes=(), probe=None):
    """Evaluate every run on every dataset and write the comparison under ``out``.

    model: a registered OpenCLIP name (the package's xs-tiny-vit-* included) or ``local-dir:DIR``.
    runs: {name: checkpoint} (or Run objects); the first run is the baseline of the differences.
    datasets: DatasetSpecs, e.g. from ``imagenet_specs(root)``, ``in9_specs(root)``, ``wds_specs(name, dir)``.
    tasks: words from ``TASK_GROUPS`` ("zeroshot", "linear_probe") or concrete task names.
    bg_gaps: extra BgGap pairs; groups with mixed_same/mixed_rand variants get one automatically.
    amp: None = on with CUDA, off (fp32) on CPU. recall_k: retrieval R@k (each k at most the set's size).
    probe: linear-probe ProbeSettings (default: clip_benchmark's defaults, 20 % of the training images
    held out for the weight-decay search); the probe trains on each set's ``train_root`` or own train split.
    Evaluations whose result JSON exists are skipped, unless the run's checkpoint content changed since
    (then all of the run's evaluations are redone, with a note; see ``checkpoints``), or the set's content
    or the task's settings differ from those the result records (then it is redone, with a note; see
    ``inputs``). Raises SetupError
    before evaluating on bad input, including a run name whose results in ``out`` are another checkpoint's.
    """
    runs, tasks, datasets, notes = _as_runs(runs), _as_tasks(tasks), list(datasets), list(notes)
    _check_datasets(datasets, bg_gaps)
    models.check_model(model)
    for run in runs:
        models.check_checkpoint(model, run)
    models.register_package_configs()
    probe = (probe or ProbeSettings()).check()
    if LINEAR_PROBE in tasks:
        check_clip_benchmark()
    device, amp = device_and_amp(amp)
    settings = inputs.TaskSettings(amp=amp, recall_k=tuple(recall_k), probe=probe)
    plan = runner.plan(runs, datasets, tasks, out, settings, notes)
    if not plan:
        raise SetupError("nothing to evaluate: " + ("; ".join(notes) or f"no dataset supports the tasks {tasks}"))
    records, stale = checkpoints.check(out, model, runs)
    os.makedirs(out, exist_ok=True)
    _record_runs(out, records, stale, notes)
    pending = runner.pending(plan, notes)
    if len(pending) < len(plan):
        log.info("%d of %d evaluations already have results in %s", len(plan) - len(pending), len(plan), out)
    runner.execute(pending, model, out, batch_size, num_workers, amp, recall_k, device, probe)
    _check_unchanged(records, runs, notes)
    return _summarise(out, model, plan, datasets, runs, results.auto_bg_gaps(datasets) + list(bg_gaps), notes)


def _summarise(out, model, plan, datasets, runs, gaps, notes):
    """Read every result of the plan and write results.csv, report.md and comparison.png."""
    rows = _collect_rows(plan, datasets, runs, gaps)
    comparison = Comparison(out, rows, notes)
    results.write_csv(comparison.csv, rows, model, {r.name: r.checkpoint for r in runs})
    with open(comparison.report, "w") as f:
        f.write(report.render(rows, runs, model, notes))
    plot.save(comparison.plot, rows, runs, model)
    return comparison


def _argument(parse):
    """Turn a SetupError from a parser into argparse's own 'argument --x: ...' error."""
    def wrapped(text):
        try:
            return parse(text)
        except SetupError as e:
            raise argparse.ArgumentTypeError(str(e))
    wrapped.__name__ = parse.__name__
    return wrapped


def build_parser():
    p = argparse.ArgumentParser(
        prog=f"python -m {__package__}.compare", description=__doc__.split("\n\n")[0],
        epilog="Datasets whose root is not given are skipped with a note; nothing is ever downloaded. "
               "Re-running with the same --out skips evaluations that already have a result JSON, unless "
               "the run's checkpoint content, the set's content or the task's settings changed since (then "
               "they are recomputed, with a note).")
    p.add_argument("--model", required=True,
                   help="registered OpenCLIP model name (incl. xs-tiny-vit-32/64) or local-dir:DIR")
    p.add_argument("--run", action="append", required=True, type=_argument(parse_run), metavar="NAME=CHECKPOINT",
                   help="a checkpoint to evaluate (repeatable); the first one is the baseline of the differences")
    p.add_argument("--imagenet-root", metavar="DIR",
                   help="folder holding val/<wnid>/ (and train/<wnid>/ for the linear probe)")
    p.add_argument("--in9-root", metavar="DIR", help="ImageNet-9 bg_challenge/ folder: <variant>/val/<class>/")
    p.add_argument("--wds", action="append", default=[], type=_argument(lambda t: parse_named_dir(t, "--wds")),
                   metavar="NAME=DIR", help="a clip_benchmark wds/ set, or a folder of such sets (one per variant)")
    p.add_argument("--bg-gap", action="append", default=[], type=_argument(parse_bg_gap), metavar="[LABEL=]SAME,RAND",
                   help="also report top-1(SAME) - top-1(RAND) for two dataset names (e.g. shapes/mixed_same)")
    p.add_argument("--tasks", default="zeroshot", type=_argument(parse_tasks),
                   help=f"comma-separated subset of {','.join(TASK_GROUPS)} (default: zeroshot)")
    p.add_argument("--probe-train", action="append", default=[],
                   type=_argument(lambda t: parse_named_dir(t, "--probe-train")), metavar="NAME=DIR",
                   help="train the linear probe of the set (or of every set of the group) NAME on DIR/train/, "
                        "a wds/ classification set with the same classnames.txt (e.g. from eval.probe_sets)")
    p.add_argument("--probe-val-proportion", type=float, default=ProbeSettings.val_proportion, metavar="P",
                   help="share of the probe's training images held out to choose its weight decay "
                        "(default: %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="where results/, results.csv, report.md and comparison.png go")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10], metavar="K",
                   help="retrieval recall@K values (default: 1 5 10; each K at most the number of images/captions)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on with CUDA, off on CPU)")
    return p


def datasets_from_args(args):
    """DatasetSpecs for the roots given (each checked on disk) and notes for the ones left out."""
    datasets, notes = [], []
    if args.imagenet_root:
        datasets += imagenet_specs(args.imagenet_root)
    else:
        notes.append("ImageNet-1k skipped: no --imagenet-root given")
    if args.in9_root:
        datasets += in9_specs(args.in9_root)
    else:
        notes.append("ImageNet-9 skipped: no --in9-root given")
    for name, folder in args.wds:
        datasets += wds_specs(name, folder)
    for name, folder in args.probe_train:
        datasets = attach_probe_train(datasets, name, folder)
    return datasets, notes


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(__package__).setLevel(logging.INFO)
    try:
        datasets, notes = datasets_from_args(args)
        comparison = compare(args.model, args.run, datasets, tasks=args.tasks, out=args.out, bg_gaps=args.bg_gap,
                             batch_size=args.batch_size, num_workers=args.num_workers, amp=args.amp,
                             recall_k=args.recall_k, notes=notes,
                             probe=ProbeSettings(val_proportion=args.probe_val_proportion))
    except SetupError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    for note in comparison.notes:
        log.info("note: %s", note)
    log.info("wrote %s, %s, %s", comparison.csv, comparison.report, comparison.plot)
    return comparison


if __name__ == "__main__":
    main(sys.argv[1:])
