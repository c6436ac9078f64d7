"""The command line: one process, a shard job, a merge, or a torchrun rank; build or --check."""
import argparse
import logging
import sys

from .distributed import attempt, distributed_env, run_distributed
from .jobs import build, check_sources, plan, report_check
from .lock import writer_lock
from .shards import merge_shards, parse_shard, shard_dir


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.precompute", description=sys.modules[__package__].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="OpenCLIP model name whose tokenizer training uses (required, except with --merge)")
    p.add_argument("--train-data", help="same value as open_clip_train's --train-data (required, except with --merge)")
    p.add_argument("--dataset-type", default="auto", choices=["auto", "csv", "webdataset"])
    p.add_argument("--csv-caption-key", default="title")
    p.add_argument("--csv-separator", default="\t")
    p.add_argument("--force-context-length", type=int, default=None)
    p.add_argument("--out", required=True, help="table folder (pass it to --xsample-embeddings)")
    p.add_argument("--encoder", default="minilm", help="same meaning as --xsample-encoder")
    p.add_argument("--device", default="cpu", help="encoder device; under torchrun 'cuda' means cuda:LOCAL_RANK")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--batch-size", type=int, default=1024, help="captions per encoder call and progress save")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that tokenize and key captions while scanning (0: in this process)")
    p.add_argument("--check", action="store_true", help="only report captions missing from --out")
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="build (or --check) only shard I of N: sources I, I+N, ... into OUT/shards/I-of-N")
    p.add_argument("--merge", action="store_true",
                   help="merge the finished sub-tables OUT/shards/*-of-N into the table OUT")
    args = p.parse_args(argv)
    if args.merge and (args.check or args.shard):
        p.error("--merge takes only --out (and optionally --model, --train-data to verify the shards)")
    if not args.merge and not (args.model and args.train_data):
        p.error("--model and --train-data are required (except with --merge)")
    return args


def main(argv=None):
    rank, world, local_rank = distributed_env()
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}/{world}] %(message)s" if world > 1 else "%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if world > 1 and (args.shard or args.merge):
        logging.error("under torchrun each rank builds its own shard and rank 0 merges: drop --shard/--merge")
        return 2
    if args.merge:
        return attempt(lambda: merge_shards(args.out, model=args.model, train_data=args.train_data))
    from open_clip import get_tokenizer

    from xsample_openclip import model_configs

    model_configs.register()
    tokenizer = get_tokenizer(args.model, context_length=args.force_context_length)
    if world > 1:
        return run_distributed(args, tokenizer, rank, world, local_rank)
    if args.check:
        folder, sources, _ = plan(args, args.shard)
        return report_check(folder, [check_sources(args, tokenizer, folder, sources)])
    from ..targets.encoders import SentenceEncoder

    code = attempt(lambda: _locked_build(args, tokenizer, SentenceEncoder))
    if code:
        return code
    if args.shard:
        logging.info(f"when all {args.shard[1]} shards are built: python -m xsample_openclip.precompute "
                     f"--out {args.out} --merge")
    return 0


def _locked_build(args, tokenizer, encoder_class):
    """The build of this job, its folder locked before the encoder loads (a refusal costs no model load)."""
    with writer_lock(shard_dir(args.out, *args.shard) if args.shard else args.out):
        build(args, tokenizer, encoder_class(args.encoder, device=args.device), args.shard)
