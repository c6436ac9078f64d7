"""The main job: X-Sample against stock CLIP on the embedded emoji data, end to end, on a CPU.

    python -m xsample_openclip.demo --out runs/demo [--seeds 0 1 2]

1. builds the OpenMoji image-caption data (``xsample_openclip.data``; cached under OUT/data);
2. trains stock CLIP (``--loss clip``) and X-Sample (``--loss xsample``) with identical settings, data
   and steps through ``python -m open_clip_train.main``, one run per loss and seed (finished runs are
   reused);
3. evaluates every checkpoint with clip_benchmark through ``eval.compare``: zero-shot classification
   (19 concepts), caption retrieval and the background-robustness variants (BG-Gap);
4. prints the report (mean +- std over seeds when there are several) and the path of comparison.png.
"""
import argparse
import logging
import shlex
import sys
from pathlib import Path

from .runs import RunSpec, TrainData, TrainSettings, train_all
from .summary import summarize

#: Settings of the default demo (chosen by the sweep documented in the README).
DEFAULT_SETTINGS = TrainSettings(model="xs-tiny-vit-64", epochs=12, batch_size=64, lr=5e-4, wd=0.1, warmup=50)
DEFAULT_XSAMPLE_ARGS = "--xsample-tau-s 0.2"


def parse_variant(text):
    """``NAME=FLAGS``: an X-Sample run named NAME with extra ``--xsample-*`` flags."""
    name, sep, flags = text.partition("=")
    if not sep or not name.replace("_", "").replace(".", "").isalnum():
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS (e.g. xsample='--xsample-tau-s 0.2'), got {text!r}")
    return name, tuple(shlex.split(flags))


def run_specs(seeds, variants):
    """Stock CLIP and every X-Sample variant, for every seed (runs are named NAME-sSEED)."""
    specs = []
    for seed in seeds:
        specs.append(RunSpec(f"clip-s{seed}", ("--loss", "clip"), seed))
        for name, flags in variants:
            specs.append(RunSpec(f"{name}-s{seed}", ("--loss", "xsample", *flags), seed))
    return specs


def eval_datasets(data):
    from .eval.compare import BgGap, wds_specs

    specs = []
    for name, root in data.eval_sets.items():
        specs += wds_specs(name, str(root))
    same, rand = data.bg_sets.get("mixed_same"), data.bg_sets.get("mixed_rand")
    gaps = [BgGap("emoji_bg", same, rand)] if same and rand else []
    return specs, gaps


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="working folder: data, logs, eval results, report")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one run per loss each)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the data build and split")
    p.add_argument("--epochs", type=int, default=DEFAULT_SETTINGS.epochs)
    p.add_argument("--batch-size", type=int, default=DEFAULT_SETTINGS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULT_SETTINGS.lr)
    p.add_argument("--warmup", type=int, default=DEFAULT_SETTINGS.warmup)
    p.add_argument("--model", default=DEFAULT_SETTINGS.model)
    p.add_argument("--variant", type=parse_variant, action="append", dest="variants",
                   help="an X-Sample run NAME=FLAGS, repeatable (a sweep); all share the CLIP baseline "
                        f"(default: xsample='{DEFAULT_XSAMPLE_ARGS}')")
    p.add_argument("--parallel", type=int, default=2, help="runs trained at once (one thread each)")
    return p.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from . import model_configs
    from .data import build_demo_data
    from .eval.compare import compare

    model_configs.register()
    out = Path(args.out).resolve()
    image_size = 32 if args.model.endswith("-32") else 64
    data = build_demo_data(out / "data", seed=args.data_seed, image_size=image_size)
    settings = TrainSettings(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             wd=DEFAULT_SETTINGS.wd, warmup=args.warmup)
    train_data = TrainData(csv=str(data.train_csv), num_samples=data.train_num_samples)
    variants = args.variants or [parse_variant(f"xsample={DEFAULT_XSAMPLE_ARGS}")]
    checkpoints = train_all(run_specs(args.seeds, variants), train_data, settings, out / "logs",
                            parallel=args.parallel)
    datasets, gaps = eval_datasets(data)
    comparison = compare(args.model, {name: str(ckpt) for name, ckpt in checkpoints.items()}, datasets,
                         tasks=("zeroshot",), out=str(out / "eval"), bg_gaps=gaps, num_workers=0)
    table = summarize(comparison.csv, out / "summary.md", settings=settings, variants=variants, seeds=args.seeds)
    print(table)
    print(f"\nper-run report: {comparison.report}\nplot: {comparison.plot}\nsummary: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
