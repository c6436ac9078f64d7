"""Section ``loss``: forward+backward time and peak memory of ``XSampleLoss`` against OpenCLIP's ``ClipLoss``.

One process, per local batch size, embedding width and precision (bf16 = the loss under
``torch.autocast(bfloat16)``, as ``--precision amp_bf16`` runs it). X-Sample also receives the batch's
caption embeddings (width 384, as all-MiniLM-L6-v2 gives) and builds its soft targets from them inside
the timed call; building them is also timed alone (the work ClipLoss has no counterpart of). Goals: at
most 1.15x ClipLoss's time and 1.2x its peak memory.
"""
import torch

from .common import (CAPTION_WIDTH, GOAL_MEMORY, GOAL_TIME, load_average, local_cases, markdown_table, say,
                     unit_rows)
from .measure import backward_step, compare, time_targets


def run(args, device, results, work):
    from open_clip.loss import ClipLoss

    from ..losses.softmax import XSampleLoss

    say(f"## Loss forward+backward: X-Sample vs ClipLoss (one process, {device.type}, {load_average()})\n")
    rows, records = [], []
    g = torch.Generator().manual_seed(0)
    for dtype_name, autocast_dtype, width, n, skipped in local_cases(args):
        if skipped:
            rows.append([dtype_name, width, n, "skipped (--bf16-max-size)"] + [""] * 7)
            continue
        image, text = unit_rows(n, width, device, g), unit_rows(n, width, device, g)
        captions = unit_rows(n, CAPTION_WIDTH, device, g)
        scale = torch.tensor(50.0, device=device)
        clip_fn, xs_fn = ClipLoss(), XSampleLoss(tau_s=0.1)
        c = compare(lambda: backward_step(clip_fn, (image, text, scale), autocast_dtype),
                    lambda: backward_step(lambda i, t, s: xs_fn(i, t, s, caption_embeddings=captions),
                                          (image, text, scale), autocast_dtype),
                    device, args.repeats, args.case_budget)
        time_targets(c, lambda: _targets(captions), device, len(c.stock_times))
        rows.append([dtype_name, width, n, *c.cells(GOAL_TIME, GOAL_MEMORY)])
        records.append(dict(dtype=dtype_name, width=width, n=n, **c.record()))
    say(markdown_table(["precision", "width", "local batch", "ClipLoss ms", "X-Sample ms",
                        "of which targets ms", "time ratio",
                        "ClipLoss peak MiB", "X-Sample peak MiB", "memory ratio",
                        f"goals (<= {GOAL_TIME}x time, <= {GOAL_MEMORY}x memory)"], rows))
    say(f"\nMedians of {args.repeats} ABBA pairs (fewer, at least 2, where a case would exceed "
        f"{args.case_budget or 'no'} s); ratio = X-Sample / ClipLoss. ({load_average()} at the end)\n")
    results["loss"] = records


def _targets(captions):
    """What XSampleLoss builds from the captions before its fused cross-entropy (one process, tau_s 0.1)."""
    from ..losses.graph import softmax_targets, unit_captions

    unit = unit_captions(captions)
    return softmax_targets(unit, unit, 0.1)
