"""Section ``guard``: what the non-finite loss guard (``patches/finite.py``) costs a training run.

Per loss call the guard records on the loss's device, without synchronising; per logging step it reads
the record (a few int64) back (``check``), in a distributed run after one ``all_reduce`` (MIN) of it
across ranks. Measured on CPU gloo with 2 processes (``torch.multiprocessing``, spawn), microseconds
each: the per-call record, ``check`` in one process (a clone and a read of the record) and ``check`` with
the all_reduce; a bare all_reduce of a tensor of the record's size, for reference.
"""
import json
import time
from pathlib import Path

from .common import load_average, markdown_table, median, say

WORLD = 2


def run(args, device, results, work):
    import torch.multiprocessing as mp

    say(f"## Non-finite guard: cost per loss call and per logging-step check (CPU gloo, {WORLD} processes, "
        f"{args.guard_checks} timed calls each, {load_average()})\n")
    folder = Path(work) / "guard"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "init").unlink(missing_ok=True)  # a rendezvous file left by an earlier run would stall gloo
    mp.start_processes(_worker, args=(str(folder), args.guard_checks), nprocs=WORLD, join=True,
                       start_method="spawn")
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(WORLD)]
    record = {name: dict(median_us=median([t for r in ranks for t in r[name]]),
                         min_us=min(min(r[name]) for r in ranks), per_rank_median_us=[median(r[name]) for r in ranks])
              for name in ranks[0]}
    _report(record, args.guard_checks)
    results["guard"] = record


def _worker(rank, folder, calls):
    """One gloo rank: times each guard operation ``calls`` times, in step with the other rank."""
    import torch
    import torch.distributed as dist

    from ..patches.finite import FiniteLossGuard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=WORLD)
    loss = torch.tensor(1.5)
    never = 10 ** 9  # no automatic check: the loop below calls check() itself
    local = FiniteLossGuard(lambda x: x, epoch=0, batches_per_epoch=never, log_every_n_steps=never)
    shared = FiniteLossGuard(lambda x: x, epoch=0, batches_per_epoch=never, log_every_n_steps=never,
                             distributed=True)
    local(loss), shared(loss)  # call 0 is a logging step: the first check happens here
    bare = torch.zeros_like(shared._state)  # the record's size (read only to size the reference collective)
    ops = {"record (per loss call)": lambda: local(loss),
           "check, one process": local.check,
           "check, distributed (all_reduce + read)": shared.check,
           f"bare all_reduce of {bare.numel()} int64": lambda: dist.all_reduce(bare, op=dist.ReduceOp.MIN)}
    out = {}
    for name, op in ops.items():
        out[name] = _time_us(op, calls, dist)
    Path(folder, f"rank{rank}.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


def _time_us(op, calls, dist):
    for _ in range(min(50, calls)):
        op()
    dist.barrier()
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        op()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def _report(record, calls):
    rows = [[name, f"{r['median_us']:.1f}", f"{r['min_us']:.1f}",
             " / ".join(f"{m:.1f}" for m in r["per_rank_median_us"])] for name, r in record.items()]
    say(markdown_table(["guard operation", "median µs", "min µs", "median per rank µs"], rows))
    say(f"\nA check runs once per --log-every-n-steps steps (and at each epoch's last step); the record runs "
        f"at every loss call. Medians over both ranks' {calls} calls. ({load_average()})\n")
