"""Section ``scale``: per-rank memory of the softmax losses with ``--local-loss --gather-with-grad`` at large
world sizes, simulated in one process (``ranks.simulated_rank``).

Both ``ClipLoss`` and ``XSampleLoss`` receive the gathered tensors a middle rank would hold. With a fixed
local batch n, per-rank memory should grow linearly with the global batch N (n x N logits and targets),
never as N x N.
"""
import torch

from .common import CAPTION_WIDTH, MIB, load_average, markdown_table, say, unit_rows
from .measure import backward_step, compare
from .ranks import simulated_rank


def run(args, device, results, work):
    from open_clip.loss import ClipLoss

    from ..losses.softmax import XSampleLoss

    n, width = args.scale_local, args.scale_width
    say(f"## Per-rank memory at scale: --local-loss --gather-with-grad, local batch {n}, width {width}, "
        f"fp32, simulated ranks ({device.type}, {load_average()})\n")
    rows, records = [], []
    g = torch.Generator().manual_seed(1)
    for world in args.scale_worlds:
        rank, big = world // 2, n * world
        image, text = unit_rows(n, width, device, g), unit_rows(n, width, device, g)
        captions = unit_rows(n, CAPTION_WIDTH, device, g)
        scale = torch.tensor(50.0, device=device)
        kw = dict(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
        clip_fn, xs_fn = ClipLoss(**kw), XSampleLoss(tau_s=0.1, **kw)
        widths = {"image": width, "text": width, "captions": CAPTION_WIDTH}
        with simulated_rank(rank, world, n, device, widths):
            c = compare(lambda: backward_step(clip_fn, (image, text, scale)),
                        lambda: backward_step(lambda i, t, s: xs_fn(i, t, s, caption_embeddings=captions),
                                              (image, text, scale)),
                        device, args.scale_repeats, args.case_budget)
        gathered = big * (2 * width + CAPTION_WIDTH) * 4 if world > 1 else 0
        per_element = (c.xsample_bytes - gathered) / (n * big)
        rows.append([world, big, f"{c.stock_bytes / MIB:.1f}", f"{c.xsample_bytes / MIB:.1f}",
                     f"**{c.memory_ratio:.2f}**", f"{c.time_ratio:.2f}", f"{gathered / MIB:.1f}",
                     f"{per_element:.1f}", f"{big * big * 4 / MIB:,.0f}"])
        records.append(dict(world_size=world, global_batch=big, gathered_bytes=gathered,
                            xsample_bytes_per_element=per_element, **c.record()))
    say(markdown_table(["world size", "global batch N", "ClipLoss MiB/rank", "X-Sample MiB/rank", "memory ratio",
                        "time ratio", "gathered features+captions MiB (X-Sample)",
                        "X-Sample bytes per n*N element (beyond the gathered rows)",
                        "one global N*N fp32 matrix MiB (not allocated)"], rows))
    say("\nPer-rank memory grows with local x global batch (the per-element column stays flat as N grows); "
        "no N x N matrix exists on any rank. The real gather's semantics (gloo, 2 processes, every OpenCLIP "
        "gather mode) are checked in tests/test_distributed.py.\n")
    results["scale"] = records
