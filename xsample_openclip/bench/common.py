"""What every benchmark section shares: printing, the machine's load, random unit inputs, goal verdicts.

Sections print Markdown (a heading, a table, notes) as they go, so a run's output can be pasted into
docs/benchmark.md as is; the same figures go to the results dict (``--json``).
"""
import os
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

MIB = 2 ** 20
#: Width of the caption embeddings X-Sample gets in every section (all-MiniLM-L6-v2's).
CAPTION_WIDTH = 384
#: The losses' goals against their stock counterparts: forward+backward time and peak memory ratios.
GOAL_TIME, GOAL_MEMORY = 1.15, 1.2


def say(text: str = "") -> None:
    print(text, flush=True)


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load_average() -> str:
    """The 1/5/15-minute load average (other jobs on the machine skew timings; say so)."""
    try:
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def unit_rows(n: int, d: int, device, generator, dtype=torch.float32) -> torch.Tensor:
    """n random unit rows of width d (drawn on the CPU, so every device gets the same numbers)."""
    return F.normalize(torch.randn(n, d, generator=generator), dim=-1).to(device, dtype)


def verdict(time_ratio: float, memory_ratio: float, time_goal: float, memory_goal: float) -> str:
    """'yes', or which goal a case missed: 'MISSED (time)', 'MISSED (memory)', 'MISSED (both)'."""
    slow, big = time_ratio > time_goal, memory_ratio > memory_goal
    if not (slow or big):
        return "yes"
    return "MISSED (" + ("both" if slow and big else "time" if slow else "memory") + ")"


def local_cases(args):
    """(precision name, autocast dtype or None, width, local batch, skipped) of the one-process sections:
    every ``--dtypes`` x ``--widths`` x ``--sizes``; bf16 above ``--bf16-max-size`` is skipped."""
    for name in args.dtypes:
        autocast_dtype = torch.bfloat16 if name == "bf16" else None
        for width in args.widths:
            for n in args.sizes:
                skipped = autocast_dtype is not None and bool(args.bf16_max_size) and n > args.bf16_max_size
                yield name, autocast_dtype, width, n, skipped
