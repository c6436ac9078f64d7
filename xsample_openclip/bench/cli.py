"""The benchmark's command line: flags and their CPU/GPU/``--quick`` defaults, and the run over sections.

    python -m xsample_openclip.bench [--device cuda] [--quick] [--sections loss sigmoid ...] [--json FILE]

Sections (``--sections``, default all, run in this order):
  loss        XSampleLoss vs ClipLoss: forward+backward time and peak memory per batch, width, precision
  sigmoid     XSampleSigLipLoss vs SigLipLoss: the same, and per-rank memory at simulated world sizes
  scale       per-rank memory of --local-loss --gather-with-grad at simulated world sizes (softmax)
  host        host time per step of the precomputed table (and the warm online encoder), 256 captions
  targets     caption-target cost as a share of a real model's training step; cache hit rates
  startup     Python start-up cost of the installed hook
  guard       cost of the non-finite guard's record and per-logging-step all_reduce (CPU gloo, 2 processes)
  e2e         python -m open_clip_train.main with stock and X-Sample losses, step times from out.log
  precompute  python -m xsample_openclip.precompute throughput, memory and --check

Timings are medians over repeats after a warm-up, stock and X-Sample interleaved (ABBA) so contention
from other jobs hits both; the load average is printed with every section. The results dict (and
``--json``, rewritten after every section) holds every raw timing the printed ratios come from.
"""
import argparse
import datetime
import importlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import cpu_name, load_average, say

SECTIONS = ("loss", "sigmoid", "scale", "host", "targets", "startup", "guard", "e2e", "precompute")


def _defaults(gpu: bool, quick: bool) -> dict:
    """Every size flag's default: CPU, GPU, and ``--quick`` (a smoke run) on top of either."""
    d = dict(
        sizes=[256, 1024, 4096, 16384] if gpu else [256, 1024, 4096], widths=[512, 1024],
        bf16_max_size=0 if gpu else 1024, repeats=20 if gpu else 5, case_budget=0 if gpu else 15.0,
        scale_local=1024 if gpu else 256, scale_worlds=[1, 8, 64, 128] if gpu else [1, 8, 64, 256],
        host_model="ViT-B-32", host_batch=256, host_batches=20, host_online_batches=4,
        host_table_rows=1_000_000 if gpu else 100_000, host_repeats=200,
        target_model="ViT-B-32" if gpu else "xs-tiny-vit-64", target_batch=256 if gpu else 64,
        target_batches=8 if gpu else 6, target_steps=10 if gpu else 5,
        minilm_captions=16384 if gpu else 1024, cache_distinct=4096, startup_repeats=40, guard_checks=2000,
        e2e_model="ViT-B-32" if gpu else "xs-tiny-vit-64", e2e_siglip_model="ViT-B-32" if gpu else "xs-tiny-sigmoid-64",
        e2e_batch=256 if gpu else 64, e2e_steps=8, e2e_workers=8 if gpu else 1,
        precompute_captions=50_000 if gpu else 2_000,
    )
    if quick:
        d.update(sizes=[128, 256], widths=[256], repeats=2, scale_local=32, scale_worlds=[1, 4, 16],
                 host_batches=2, host_online_batches=1, host_table_rows=4096, host_repeats=10,
                 target_model="xs-tiny-vit-32", target_batch=16, target_batches=3, target_steps=2,
                 minilm_captions=64, cache_distinct=512, startup_repeats=4, guard_checks=50,
                 e2e_model="xs-tiny-vit-32", e2e_siglip_model="xs-tiny-sigmoid-32", e2e_batch=16, e2e_steps=3,
                 precompute_captions=300)
    return d


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS, metavar="SECTION",
                   help=f"some of: {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes everywhere (a smoke run)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch and OMP_NUM_THREADS)")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument("--workdir", default=None, help="where generated data goes (default: a temporary folder)")
    g = p.add_argument_group("loss and sigmoid sections")
    g.add_argument("--sizes", type=int, nargs="+", help="local batch sizes (CPU 256 1024 4096; GPU adds 16384)")
    g.add_argument("--widths", type=int, nargs="+", help="embedding widths (default 512 1024)")
    g.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    g.add_argument("--bf16-max-size", type=int, help="skip bf16 above this local batch (CPU default 1024: no "
                                                     "native bf16 GEMM on most CPUs; 0: no limit)")
    g.add_argument("--repeats", type=int, help="timed ABBA pairs per case (at least 2)")
    g.add_argument("--case-budget", type=float, help="seconds of timing per case; fewer pairs (>= 2) where one "
                                                     "pair takes longer (CPU default 15, GPU unlimited)")
    g = p.add_argument_group("scale section (and the sigmoid section's simulated ranks)")
    g.add_argument("--scale-local", type=int, help="local batch per rank")
    g.add_argument("--scale-width", type=int, default=512)
    g.add_argument("--scale-worlds", type=int, nargs="+", help="simulated world sizes")
    g.add_argument("--scale-repeats", type=int, default=3)
    g = p.add_argument_group("host section")
    g.add_argument("--host-model", help="model whose tokenizer makes the token rows (default ViT-B-32)")
    g.add_argument("--host-batch", type=int, help="samples per batch (default 256)")
    g.add_argument("--host-batches", type=int, help="distinct batches the timed calls cycle over")
    g.add_argument("--host-online-batches", type=int, help="of those, batches timed with the online encoder")
    g.add_argument("--host-table-rows", type=int, help="rows of the table (CPU 100000, GPU 1000000)")
    g.add_argument("--host-repeats", type=int, help="timed calls per measurement")
    g = p.add_argument_group("targets section")
    g.add_argument("--target-model", help="CPU: xs-tiny-vit-64, GPU: ViT-B-32 (also precompute's tokenizer)")
    g.add_argument("--target-batch", type=int)
    g.add_argument("--target-batches", type=int, help="batches timed per target path")
    g.add_argument("--target-steps", type=int, help="training steps timed per loss")
    g.add_argument("--minilm-captions", type=int)
    g.add_argument("--cache-distinct", type=int)
    g = p.add_argument_group("startup and guard sections")
    g.add_argument("--startup-repeats", type=int, help="rounds of `python -c pass` per variant (default 40)")
    g.add_argument("--guard-checks", type=int, help="timed calls per guard operation (default 2000)")
    g = p.add_argument_group("e2e section")
    g.add_argument("--e2e-model", help="softmax runs (CPU xs-tiny-vit-64, GPU ViT-B-32)")
    g.add_argument("--e2e-siglip-model", help="sigmoid runs, with --siglip (CPU xs-tiny-sigmoid-64, GPU ViT-B-32)")
    g.add_argument("--e2e-batch", type=int)
    g.add_argument("--e2e-steps", type=int, help="steps per epoch")
    g.add_argument("--e2e-epochs", type=int, default=2)
    g.add_argument("--e2e-rounds", type=int, default=1)
    g.add_argument("--e2e-workers", type=int, help="data loader workers (CPU 1, GPU 8)")
    g = p.add_argument_group("precompute section")
    g.add_argument("--precompute-captions", type=int)
    args = p.parse_args(argv)
    args.argv = list(argv)
    for key, value in _defaults(args.device.startswith("cuda"), args.quick).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .. import precompute

    precompute.common.PROGRESS_BARS = False
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # e.g. "No pretrained weights loaded" for random models
    try:
        return run(args)
    finally:
        logging.getLogger().setLevel(root_level)
        precompute.common.PROGRESS_BARS = True


def _quiet_transformers():
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run(args) -> dict:
    """Every chosen section in order; returns the results dict (also written to ``--json``)."""
    _quiet_transformers()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    results = _header(args, device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xsample_bench_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for section in (s for s in SECTIONS if s in args.sections):
            t0 = time.perf_counter()
            importlib.import_module(f"{__package__}.{section}").run(args, device, results, work)
            results["section_s"][section] = time.perf_counter() - t0
            _write_json(args, results)
    results["total_s"] = time.perf_counter() - started
    results["load_end"] = load_average()
    say(f"Total {results['total_s']:.0f} s; {results['load_end']} at the end.")
    if device.type == "cpu":
        say("GPU figures are measured by `python -m xsample_openclip.bench.gpu_check` on a CUDA machine "
            "(docs/benchmark.md).")
    _write_json(args, results)
    return results


def _header(args, device) -> dict:
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
               "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "python": sys.version.split()[0], "command": " ".join(["python -m xsample_openclip.bench", *args.argv]),
               "load_start": load_average(), "args": vars(args), "section_s": {}}
    say(f"# xsample_openclip.bench — {results['date']}")
    say(f"{results['device']}, {results['cores']} cores, torch {torch.__version__}, {args.threads} CPU thread(s), "
        f"{results['load_start']}\n")
    return results


def _write_json(args, results) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
