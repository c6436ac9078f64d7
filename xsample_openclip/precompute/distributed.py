"""Precompute under torchrun: every rank builds (or checks) its shard on its own device, ranks meet at a
gloo barrier, rank 0 merges (or sums the checks), and every rank exits with rank 0's code."""
import logging
import os

from ..targets.sources import expand_sources
from .jobs import build, check_sources, report_check
from .common import BARRIER_TIMEOUT, PrecomputeError
from .shards import merge_shards

def distributed_env():
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def rank_device(device: str, local_rank: int) -> str:
    """``cuda`` under torchrun means this rank's own GPU."""
    return f"cuda:{local_rank}" if device == "cuda" else device


def attempt(step) -> int:
    """Run ``step``; 0, or the exit code of its failure (logged): 2 for a refusal, 1 for an error."""
    try:
        step()
        return 0
    except PrecomputeError as err:
        logging.error(str(err))
        return 2
    except Exception:
        logging.exception("failed")
        return 1


def run_distributed(args, tokenizer, rank, world, local_rank) -> int:
    """Each rank builds (or checks) its shard, all meet at a gloo barrier, rank 0 merges (or sums the
    check); every rank returns rank 0's exit code, so none exits alone or is left waiting."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        code = (_distributed_check if args.check else _distributed_build)(args, tokenizer, rank, world, local_rank)
        code = torch.tensor([code])
        dist.broadcast(code, 0)
        return int(code)
    finally:
        dist.destroy_process_group()


def _distributed_build(args, tokenizer, rank, world, local_rank) -> int:
    """This rank's shard on its own device; then rank 0 merges, only if no rank failed."""
    import torch
    import torch.distributed as dist

    from ..targets.encoders import SentenceEncoder

    failed = torch.tensor([attempt(lambda: build(args, tokenizer, SentenceEncoder(
        args.encoder, device=rank_device(args.device, local_rank)), (rank, world))) != 0])
    dist.all_reduce(failed)  # the barrier: every rank's shard is finished (or failed) past this line
    if failed.item():
        logging.error(f"{failed.item()} of {world} shard(s) failed (errors above); fix the cause and run the "
                      "same command again: finished shards are kept, interrupted ones resume")
        return 1
    if rank != 0:
        return 0
    return attempt(lambda: merge_shards(args.out, world, args.model, args.train_data))


def _distributed_check(args, tokenizer, rank, world, local_rank) -> int:
    """This rank's share of the sources against the merged table; rank 0 reports the sum."""
    import torch.distributed as dist

    share = expand_sources(args.train_data)[rank::world]
    part = {}
    code = attempt(lambda: part.update(check_sources(args, tokenizer, args.out, share)))
    parts = [None] * world if rank == 0 else None
    dist.gather_object(part if code == 0 else None, parts, dst=0)
    if rank != 0:
        return code
    if any(p is None for p in parts):
        logging.error(f"{sum(p is None for p in parts)} of {world} rank(s) could not check their share (errors above)")
        return 2
    return report_check(args.out, parts)
