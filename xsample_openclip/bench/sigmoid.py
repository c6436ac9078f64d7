"""Section ``sigmoid``: ``XSampleSigLipLoss`` against OpenCLIP's ``SigLipLoss``, in one process and per rank.

1. Forward+backward time and peak memory per local batch, width and precision (as section ``loss``),
   logit scale 10 and bias -10 (SigLIP's initialisation), kernel targets from 384-wide captions (their
   building also timed alone: the work SigLipLoss has no counterpart of).
2. Per-rank memory with ``dist_impl="gather"`` at large simulated world sizes (``ranks``): both losses
   compute one n x n block per rank and keep each block's saved tensors until backward, so per-rank
   memory grows with local x global batch; no rank ever holds a global N x N matrix.
Goals: at most 1.15x SigLipLoss's time and 1.2x its peak memory.
"""
import torch

from .common import (CAPTION_WIDTH, GOAL_MEMORY, GOAL_TIME, MIB, load_average, local_cases, markdown_table, say,
                     unit_rows)
from .measure import backward_step, compare, time_targets
from .ranks import simulated_all_gather

SCALE, BIAS = 10.0, -10.0


def run(args, device, results, work):
    results["sigmoid"] = dict(local=_local(args, device), ranks=_ranks(args, device))


def _losses(**kw):
    from open_clip.loss import SigLipLoss

    from ..losses.sigmoid import XSampleSigLipLoss

    return SigLipLoss(**kw), XSampleSigLipLoss(tau_s=0.1, **kw)


def _steps(siglip, xsample, image, text, captions, autocast_dtype):
    device = image.device
    scale, bias = torch.tensor(SCALE, device=device), torch.tensor(BIAS, device=device)
    leaves = (image, text, scale, bias)
    return (lambda: backward_step(siglip, leaves, autocast_dtype),
            lambda: backward_step(lambda i, t, s, b: xsample(i, t, s, b, caption_embeddings=captions),
                                  leaves, autocast_dtype))


def _targets(captions):
    """What XSampleSigLipLoss builds from the captions before its fused loss (one process, tau_s 0.1)."""
    from ..losses.graph import kernel_targets, unit_captions

    unit = unit_captions(captions)
    return kernel_targets(unit, unit, 0.1)


def _local(args, device):
    say(f"## Sigmoid loss forward+backward: X-Sample vs SigLipLoss (one process, {device.type}, "
        f"{load_average()})\n")
    rows, records = [], []
    g = torch.Generator().manual_seed(2)
    for dtype_name, autocast_dtype, width, n, skipped in local_cases(args):
        if skipped:
            rows.append([dtype_name, width, n, "skipped (--bf16-max-size)"] + [""] * 7)
            continue
        image, text = unit_rows(n, width, device, g), unit_rows(n, width, device, g)
        captions = unit_rows(n, CAPTION_WIDTH, device, g)
        c = compare(*_steps(*_losses(), image, text, captions, autocast_dtype), device, args.repeats,
                    args.case_budget)
        time_targets(c, lambda: _targets(captions), device, len(c.stock_times))
        rows.append([dtype_name, width, n, *c.cells(GOAL_TIME, GOAL_MEMORY)])
        records.append(dict(dtype=dtype_name, width=width, n=n, **c.record()))
    say(markdown_table(["precision", "width", "local batch", "SigLipLoss ms", "X-Sample ms",
                        "of which targets ms", "time ratio",
                        "SigLipLoss peak MiB", "X-Sample peak MiB", "memory ratio",
                        f"goals (<= {GOAL_TIME}x time, <= {GOAL_MEMORY}x memory)"], rows))
    say(f"\nMedians of {args.repeats} ABBA pairs; ratio = X-Sample / SigLipLoss. ({load_average()})\n")
    return records


def _ranks(args, device):
    n, width = args.scale_local, args.scale_width
    say(f"## Sigmoid loss per rank at scale: dist_impl gather, local batch {n}, width {width}, fp32, "
        f"simulated ranks ({device.type}, {load_average()})\n")
    rows, records = [], []
    g = torch.Generator().manual_seed(3)
    for world in args.scale_worlds:
        rank, big = world // 2, n * world
        image, text = unit_rows(n, width, device, g), unit_rows(n, width, device, g)
        captions = unit_rows(n, CAPTION_WIDTH, device, g)
        losses = _losses(rank=rank, world_size=world, dist_impl="gather")
        with simulated_all_gather(rank, world, n, device, {"text": width, "captions": CAPTION_WIDTH}):
            c = compare(*_steps(*losses, image, text, captions, None), device, args.scale_repeats, args.case_budget)
        gathered = big * (width + CAPTION_WIDTH) * 4 if world > 1 else 0
        per_element = (c.xsample_bytes - gathered) / (n * big)
        rows.append([world, big, f"{c.stock_bytes / MIB:.1f}", f"{c.xsample_bytes / MIB:.1f}",
                     f"**{c.memory_ratio:.2f}**", f"{c.time_ratio:.2f}", f"{gathered / MIB:.1f}",
                     f"{per_element:.1f}", f"{big * big * 4 / MIB:,.0f}"])
        records.append(dict(world_size=world, global_batch=big, gathered_bytes=gathered,
                            xsample_bytes_per_element=per_element, **c.record()))
    say(markdown_table(["world size", "global batch N", "SigLipLoss MiB/rank", "X-Sample MiB/rank", "memory ratio",
                        "time ratio", "gathered texts+captions MiB (X-Sample)",
                        "X-Sample bytes per n*N element (beyond the gathered rows)",
                        "one global N*N fp32 matrix MiB (not allocated)"], rows))
    say("\nEach rank computes world-size blocks of n x n and keeps each block's saved tensors (X-Sample: the "
        "raw similarities and the soft target) until backward: per-rank memory grows with n x N (the "
        "per-element column stays flat as N grows), never N x N. The gathered features cost N x width on "
        "every rank in both losses. (SigLIP's default bidir schedule exchanges neighbours instead of "
        "gathering; it is not simulated here, its blocks are the same.)\n")
    return records
