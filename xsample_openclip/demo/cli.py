"""``python -m xsample_openclip.demo``: X-Sample against the stock OpenCLIP loss, end to end, on a CPU.

    python -m xsample_openclip.demo --out runs/demo                         # the main job (~10 min)
    python -m xsample_openclip.demo --out runs/s3 --seeds 0 1 2             # 3 seeds, paired differences
    python -m xsample_openclip.demo --out runs/sweep --split val --variant tau0.1='--xsample-tau-s 0.1' ...
    python -m xsample_openclip.demo --out runs/sig --family sigmoid         # stock SigLIP vs X-Sample SigLIP
    python -m xsample_openclip.demo --out runs/ft --finetune                # fine-tune a trained stock CLIP
    python -m xsample_openclip.demo --out runs/shapes --dataset shapes      # attribute-heavy captions
    python -m xsample_openclip.demo --out runs/lit --text-tower minilm      # pretrained MiniLM text tower, locked
    python -m xsample_openclip.demo --out runs/bg --data-variant decorrelated   # backgrounds carry no class
    python -m xsample_openclip.demo --out runs/sp --dataset shapes --data-variant mixed   # another caption style
    python -m xsample_openclip.demo --out runs/paper --family paper --seeds 0 1 2 3 4   # CLIP, SimCLR, X-CLR,
        SupCon, X-Sample (+ two views) by linear probe (``demo/paper.py``); --data-fraction 0.25 for less data

1. builds the data (cached under OUT/data); 2. trains the baseline (``--loss clip``, or ``--loss clip
--siglip`` for the sigmoid family) and every X-Sample variant with identical settings, data order and
steps through OpenCLIP's trainer (``python -m xsample_openclip.launch``), once per seed (finished runs are reused); with
``--finetune`` the baseline is the pretraining and every loss then continues from its checkpoint for
``--finetune-epochs`` (``--pretrained PATH``: equal compute after the switch); 3. evaluates every
checkpoint on the split's held-out sets with clip_benchmark through ``eval.compare`` (``val`` for
choosing settings, ``test`` for reporting); 4. prints the summary (mean +- std per loss, paired
differences per seed with their 95 % CI) and writes OUT/summary-<split>.md, the per-seed numbers
OUT/summary-<split>-per-seed.csv (``python -m xsample_openclip.demo.tables FILE`` rebuilds the table
from them), comparison and loss-curve plots. Every run trains through the hook-free launcher
``python -m xsample_openclip.launch`` and must record the asked loss in its params.txt.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from pathlib import Path

from ..model_configs import minilm
from .datasets import DATASETS, data_folder
from .runs import RunSpec, TrainData, TrainSettings, loss_curve, train_all

#: The default comparison (the README's main command).
DEFAULT_SETTINGS = TrainSettings()
FAMILIES = {
    # family: (baseline name, baseline flags, X-Sample loss and flags, default model); --siglip makes
    # OpenCLIP initialise logit scale 10 and bias -10 for both sigmoid runs alike
    "softmax": ("clip", ("--loss", "clip"), ("--loss", "xsample"), "xs-tiny-vit-64"),
    "sigmoid": ("siglip", ("--loss", "clip", "--siglip"), ("--loss", "xsample-siglip", "--siglip"), "xs-tiny-sigmoid-64"),
}
#: Learning rate per family, each chosen on the validation split with the stock baseline's zero-shot top-1
#: (docs/studies/validation.md): 2.5e-4 for CLIP, 5e-4 for SigLIP; the paper family keeps the softmax choice.
FAMILY_LR = {"softmax": 2.5e-4, "sigmoid": 5e-4, "paper": 2.5e-4}
#: --text-tower: (default model, flags every run adds). ``minilm``: the packaged all-MiniLM-L6-v2 as the text
#: tower, every MiniLM weight locked (LayerNorms too), a learned projection; the locked tower in eval mode,
#: each caption pooled once (--xsample-locked-text-cache, for every loss alike; docs/lit-regime.md).
MINILM_FLAGS = (*minilm.LOCK_FLAGS, "--xsample-locked-text-cache", "100000")
TEXT_TOWERS = {"scratch": (None, ()), "minilm": ("xs-tiny-vit-64-minilm", MINILM_FLAGS)}
#: Learning rate of a --text-tower regime where it is not its family's: chosen on validation with the stock
#: baseline's zero-shot top-1 (docs/studies/validation.md, "The MiniLM regime: learning rate").
TEXT_TOWER_LR = {"minilm": 5e-4}


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_variant(text):
    """``NAME=FLAGS``: an X-Sample run named NAME with extra ``--xsample-*`` flags."""
    name, sep, flags = text.partition("=")
    if not sep or not name.replace("_", "").replace(".", "").replace("-", "").isalnum():
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS (e.g. tau0.1='--xsample-tau-s 0.1'), got {text!r}")
    return name, tuple(shlex.split(flags))


def run_specs(seeds, family, variants, settings=None, pretrained=None, prefix=""):
    """The baseline and every X-Sample variant, per seed (runs are named [PREFIX]NAME-sSEED)."""
    base_name, base_flags, xs_loss, _ = FAMILIES[family]
    specs = []
    for seed in seeds:
        start = pretrained[seed] if pretrained else None
        specs.append(RunSpec(f"{prefix}{base_name}-s{seed}", base_flags, seed, settings, start))
        for name, flags in variants:
            specs.append(RunSpec(f"{prefix}{name}-s{seed}", (*xs_loss, *flags), seed, settings, start))
    return specs


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="working folder: data, logs, eval results, summaries")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="emoji")
    p.add_argument("--data-variant", default="default",
                   help="emoji: 'decorrelated' (backgrounds carry no class); shapes: caption style 'pair' "
                        "(colour and shape only) or 'mixed' (full or pair caption per image)")
    p.add_argument("--split", choices=("val", "test"), default="test",
                   help="held-out sets to evaluate: val to choose settings, test to report (default)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one run per loss each)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the data build and split")
    p.add_argument("--eval-scale", type=_positive_int, default=1, metavar="K",
                   help="K times the images of every held-out set (emoji: per class in the zero-shot and background "
                        "sets; shapes: per split); the training data stay the same bytes. A larger set narrows "
                        "the evaluation's share of the noise, not the training seeds' (docs/studies/results.md, section 8)")
    p.add_argument("--family", choices=sorted(FAMILIES) + ["paper"], default="softmax",
                   help="softmax: CLIP vs X-Sample; sigmoid: SigLIP vs X-Sample SigLIP; paper: CLIP, SimCLR, "
                        "X-CLR (caption and class graphs), SupCon, X-Sample (one and two views), by linear probe")
    p.add_argument("--epochs", type=int, default=DEFAULT_SETTINGS.epochs)
    p.add_argument("--batch-size", type=int, default=DEFAULT_SETTINGS.batch_size)
    p.add_argument("--lr", type=float, default=None,
                   help=f"default per --family, chosen on validation: {FAMILY_LR}; with --text-tower minilm "
                        f"{TEXT_TOWER_LR['minilm']}, chosen on validation for that regime")
    p.add_argument("--warmup", type=int, default=DEFAULT_SETTINGS.warmup)
    p.add_argument("--model", default=None, help="default: xs-tiny-vit-64 (softmax), xs-tiny-sigmoid-64 (sigmoid), "
                                                 "xs-tiny-vit-64-minilm (--text-tower minilm)")
    p.add_argument("--text-tower", choices=sorted(TEXT_TOWERS), default="scratch",
                   help="scratch: both towers learn from scratch; minilm: the packaged all-MiniLM-L6-v2, locked "
                        f"({' '.join(MINILM_FLAGS)}: no dropout, each caption through MiniLM once), with a "
                        "learned projection (softmax family; docs/lit-regime.md)")
    p.add_argument("--variant", type=parse_variant, action="append", dest="variants",
                   help="an X-Sample run NAME=FLAGS, repeatable (a sweep); all share the baseline "
                        "(default: one run with the package's defaults)")
    p.add_argument("--finetune", action="store_true",
                   help="pretrain the baseline for --epochs, then continue every loss from it")
    p.add_argument("--finetune-epochs", type=int, default=6)
    p.add_argument("--finetune-lr", type=float, default=None, help="default: --lr / 2")
    p.add_argument("--parallel", type=int, default=2, help="runs trained at once (one thread each)")
    p.add_argument("--probe", action="store_true",
                   help="also a linear probe of the image tower (emoji concepts; shapes colour and shape of the "
                        "unseen pairs): less noisy than zero-shot with a tiny text tower; trained runs are reused "
                        "(the paper family always probes)")
    paper = p.add_argument_group("--family paper (xsample_openclip/demo/paper.py)")
    paper.add_argument("--data-fraction", type=float, default=1.0,
                       help="train on the first F of a seeded (--data-seed) shuffle of the training images: "
                            "0.25, 0.5, 1.0 (nested); results go to logs-fF/, eval-SPLIT-fF/, summary-SPLIT-fF*")
    paper.add_argument("--paper-losses", nargs="+", metavar="LOSS",
                       help="only these runs (clip is always added, the baseline): clip simclr xclr xclr-class "
                            "supcon xsample xsample-2v (default: all)")
    paper.add_argument("--xclr-temperature", type=float, default=0.2,
                       help="logit temperature T of simclr, xclr, xclr-class, supcon (default 0.2, chosen on the "
                            "validation split over the paper's 0.1: docs/studies/validation.md)")
    paper.add_argument("--tau-s-captions", default=None,
                       help="--xsample-tau-s of xclr, xsample, xsample-2v (default: the package's, auto)")
    paper.add_argument("--tau-s-class", type=float, default=0.1, help="--xsample-tau-s of xclr-class (default 0.1)")
    paper.add_argument("--image-weight", type=float, default=1.0, help="--xsample-image-weight of xsample-2v")
    paper.add_argument("--view-flags", type=shlex.split, default=[], metavar="'FLAGS'",
                       help="extra flags of every two-view run, e.g. '--aug-cfg scale=(0.08,1.0)' "
                            "(augmentation strength) or '--xsample-view-blur 0.5'")
    args = p.parse_args(argv)
    if args.family == "paper":
        wrong = [flag for flag, bad in (("--dataset shapes", args.dataset != "emoji"), ("--finetune", args.finetune),
                                        ("--variant", bool(args.variants))) if bad]
        if wrong:
            p.error(f"--family paper runs a fixed set of losses on the emoji data (class captions from its "
                    f"concepts): drop {', '.join(wrong)}; choose runs with --paper-losses")
        if not 0.0 < args.data_fraction <= 1.0:
            p.error(f"--data-fraction must be in (0, 1], got {args.data_fraction}")
        from .paper import PAPER_LOSS_NAMES

        unknown = sorted(set(args.paper_losses or ()) - set(PAPER_LOSS_NAMES))
        if unknown:
            p.error(f"--paper-losses: unknown {unknown}; choose from {' '.join(PAPER_LOSS_NAMES)}")
    elif args.data_fraction != 1.0 or args.paper_losses:
        p.error("--data-fraction and --paper-losses belong to --family paper")
    if args.data_variant not in DATASETS[args.dataset].variants:
        p.error(f"--data-variant for {args.dataset}: one of {DATASETS[args.dataset].variants}")
    _check_text_tower(p, args)
    if args.lr is None:
        args.lr = TEXT_TOWER_LR.get(args.text_tower, FAMILY_LR[args.family])
    return args


def _check_text_tower(p, args):
    """--text-tower minilm: the softmax family with a MiniLM config (its default unless --model names one)."""
    if args.text_tower == "scratch":
        if args.model in minilm.NAMES:
            p.error(f"--model {args.model} has the MiniLM text tower: add --text-tower minilm (it locks the tower)")
        return
    if args.family != "softmax":
        p.error(f"--text-tower {args.text_tower} runs the softmax family (CLIP vs X-Sample); drop --family {args.family}")
    if args.model is not None and args.model not in minilm.NAMES:
        p.error(f"--text-tower {args.text_tower}: --model must be one of {', '.join(minilm.NAMES)}, got {args.model}")
    args.model = args.model or TEXT_TOWERS[args.text_tower][0]
    problems = minilm.run_problems(args)  # the refusal main would give at parsing, before any data is built
    if problems:
        p.error("; ".join(problems))


def _train(args, data, out: Path):
    """Train every run; returns (settings, {run: checkpoint}, the names of the compared losses)."""
    base_name, _, xs_loss, default_model = FAMILIES[args.family]
    settings = TrainSettings(model=args.model or default_model, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, wd=DEFAULT_SETTINGS.wd, warmup=args.warmup,
                             extra=TEXT_TOWERS[args.text_tower][1])
    train_data = TrainData(csv=str(data.train_csv), num_samples=data.train_num_samples)
    variants = args.variants or [(xs_loss[1], ())]
    logs = out / "logs"
    if not args.finetune:
        checkpoints = train_all(run_specs(args.seeds, args.family, variants), train_data, settings, logs,
                                parallel=args.parallel)
        return settings, checkpoints, [base_name] + [name for name, _ in variants], variants
    pretrain = train_all(run_specs(args.seeds, args.family, []), train_data, settings, logs, parallel=args.parallel)
    stage = dataclasses.replace(settings, epochs=args.finetune_epochs, lr=args.finetune_lr or args.lr / 2,
                                warmup=min(settings.warmup, 10))
    starts = {seed: str(pretrain[f"{base_name}-s{seed}"]) for seed in args.seeds}
    specs = run_specs(args.seeds, args.family, variants, stage, starts, prefix="ft-")
    checkpoints = train_all(specs, train_data, settings, logs, parallel=args.parallel)
    return stage, checkpoints, [f"ft-{base_name}"] + [f"ft-{name}" for name, _ in variants], variants


def _describe(args, settings, variants, losses):
    lines = [f"data: {args.dataset}" + (f" ({args.data_variant})" if args.data_variant != "default" else "")
             + (f", held-out sets x{args.eval_scale}" if args.eval_scale != 1 else "")
             + f", split {args.split}; model {settings.model}, {settings.epochs} epochs, batch {settings.batch_size}, "
             f"lr {settings.lr}, wd {settings.wd}, warmup {settings.warmup}; seeds {args.seeds}"]
    if args.text_tower == "minilm":
        lines.append(f"text tower: the packaged all-MiniLM-L6-v2, every weight locked ({' '.join(settings.extra)}); "
                     "in eval mode, each caption pooled once; the projection, the image tower and the logit "
                     "scale learn")
    if args.finetune:
        lines.append(f"fine-tuning: every loss continues from the stock baseline trained {args.epochs} epochs "
                     f"(--pretrained), for {settings.epochs} epochs at lr {settings.lr}")
    lines += [f"{losses[0]}: {' '.join(FAMILIES[args.family][1])}"]
    lines += [f"{loss}: {' '.join(FAMILIES[args.family][2] + tuple(flags))}"
              for loss, (_, flags) in zip(losses[1:], variants)]
    return lines


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from .. import model_configs
    from ..eval.compare import compare
    from . import plots
    from .summary import summarize

    model_configs.register()
    out = Path(args.out).resolve()
    dataset = DATASETS[args.dataset]
    model = args.model or FAMILIES["softmax" if args.family == "paper" else args.family][3]
    image_size = model_configs.image_size(model) or (32 if model.endswith("-32") else 64)
    data = dataset.build(data_folder(out, dataset, args.data_variant, args.data_seed, image_size, args.eval_scale),
                         args.data_seed, image_size, args.data_variant, args.eval_scale)
    if args.family == "paper":
        from . import paper

        return paper.run(args, data, out, TrainSettings(model=model, epochs=args.epochs, batch_size=args.batch_size,
                                                        lr=args.lr, wd=DEFAULT_SETTINGS.wd, warmup=args.warmup))
    settings, checkpoints, losses, variants = _train(args, data, out)
    runs = {f"{loss}-s{seed}": str(checkpoints[f"{loss}-s{seed}"]) for loss in losses for seed in args.seeds}
    suffix = "-finetune" if args.finetune else ""  # fine-tuning shares the folder with its pretraining
    name = args.split + suffix
    specs, gaps = dataset.eval_specs(data, args.split)
    tasks, headline = ("zeroshot",), dataset.headline
    if args.probe:
        from ..eval.probe_sets import add_linear_probe

        specs = add_linear_probe(specs, data.root, out / "probe-sets")
        tasks, headline = ("zeroshot", "linear_probe"), dataset.headline + dataset.probe
    comparison = compare(settings.model, runs, specs, tasks=tasks, out=str(out / f"eval-{name}"),
                         bg_gaps=gaps, num_workers=0)
    header = _describe(args, settings, variants, losses)
    table, rows = summarize(comparison.csv, out, losses, headline, args.split, dataset.primary,
                            args.seeds, header, name=name)
    title = (f"{' vs '.join(losses)} on {args.dataset} ({args.split} split), "
             f"{len(args.seeds)} seed{'s' if len(args.seeds) > 1 else ''}")
    plot = plots.comparison(out / f"comparison-{name}.png", rows, losses, title)
    curves = {loss: {seed: loss_curve(out / "logs" / f"{loss}-s{seed}" / "out.log") for seed in args.seeds}
              for loss in losses}
    curve_plot = plots.loss_curves(out / f"loss-curves{suffix}.png", curves, f"training loss, {args.dataset}")
    print(table)
    per_seed = out / f"summary-{name}-per-seed.csv"
    print(f"\nsummary: {out / f'summary-{name}.md'}\nplots: {plot}, {curve_plot}\n"
          f"per-run report: {comparison.report}\n"
          f"per-seed numbers: {per_seed}; the table again from them alone: "
          f"python -m xsample_openclip.demo.tables {per_seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
