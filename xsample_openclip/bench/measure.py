"""Timing and peak memory of a stock loss and its X-Sample counterpart, measured together in one run.

Timings: ``compare`` runs the two alternately in ABBA order (pair r runs stock first when r is even,
X-Sample first when it is odd), so contention from other jobs on the machine hits both alike; every
single timing is kept (``Comparison.stock_times`` / ``xsample_times``, in run order) and the ratio is the ratio
of their medians.

Peak memory: what the allocator hands out during one call beyond what was allocated when it started.
On CUDA that is ``torch.cuda.max_memory_allocated``; on the CPU, the allocation and free events that
``torch.profiler`` (``profile_memory=True``) records for every tensor, replayed in order. Both count
every tensor the call creates (saved activations, temporaries, gradients), not pre-existing inputs.
"""
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

import torch

from .common import MIB, median, verdict


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device) -> float:
    """Seconds of one call, the device's queued work included."""
    return timed_value(fn, device)[0]


def timed_value(fn: Callable, device: torch.device):
    """(seconds, result) of one call, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - start, value


def peak_memory(fn: Callable, device: torch.device) -> int:
    """Bytes allocated at the peak of ``fn()`` beyond what was allocated when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu and cuda only, not {device.type}")
    return _cpu_peak(fn)


def _cpu_peak(fn: Callable) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    memory = [e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    current = peak = 0
    for event in sorted(memory, key=lambda e: float(e["ts"])):
        current += int(event["args"]["Bytes"])
        peak = max(peak, current)
    return peak


@dataclass
class Comparison:
    """Both losses' peak memory and every timing of one interleaved comparison."""

    stock_bytes: int
    xsample_bytes: int
    stock_times: List[float] = field(default_factory=list)    # seconds, in run order
    xsample_times: List[float] = field(default_factory=list)
    stock_first: List[bool] = field(default_factory=list)  # per pair: did the stock loss run first?
    targets_times: List[float] = field(default_factory=list)  # X-Sample's target building alone, if timed

    @property
    def time_ratio(self) -> float:
        return median(self.xsample_times) / median(self.stock_times)

    @property
    def memory_ratio(self) -> float:
        return self.xsample_bytes / max(self.stock_bytes, 1)

    def cells(self, time_goal: float, memory_goal: float) -> list:
        """Table cells: both medians and the targets' (ms), the time ratio, both peaks (MiB), the memory ratio,
        the verdict."""
        return [f"{median(self.stock_times) * 1e3:.1f}", f"{median(self.xsample_times) * 1e3:.1f}",
                f"{median(self.targets_times) * 1e3:.1f}", f"**{self.time_ratio:.2f}**",
                f"{self.stock_bytes / MIB:.1f}", f"{self.xsample_bytes / MIB:.1f}", f"**{self.memory_ratio:.2f}**",
                verdict(self.time_ratio, self.memory_ratio, time_goal, memory_goal)]

    def record(self) -> dict:
        """The JSON record: raw timings and bytes, and the medians and ratios computed from them."""
        return dict(stock_bytes=self.stock_bytes, xsample_bytes=self.xsample_bytes,
                    stock_times_s=self.stock_times, xsample_times_s=self.xsample_times, stock_first=self.stock_first,
                    stock_s=median(self.stock_times), xsample_s=median(self.xsample_times),
                    time_ratio=self.time_ratio, memory_ratio=self.memory_ratio,
                    **(dict(targets_times_s=self.targets_times, targets_s=median(self.targets_times))
                       if self.targets_times else {}))


def compare(run_stock: Callable, run_xsample: Callable, device: torch.device, repeats: int,
            budget_s: float = 0.0) -> Comparison:
    """Peak memory of each (the profiled first call doubles as warm-up), then ``repeats`` ABBA pairs of
    timings; fewer pairs (at least 2) where the first measurements show they would exceed ``budget_s``."""
    start = time.perf_counter()
    result = Comparison(peak_memory(run_stock, device), peak_memory(run_xsample, device))
    if budget_s:
        repeats = max(2, min(repeats, int(budget_s / max(time.perf_counter() - start, 1e-9))))
    if device.type == "cuda":  # a plain warm-up as well: the first CUDA calls choose kernels
        run_stock(), run_xsample()
    for r in range(repeats):
        stock_first = r % 2 == 0
        result.stock_first.append(stock_first)
        for is_stock in ((True, False) if stock_first else (False, True)):
            seconds = timed(run_stock if is_stock else run_xsample, device)
            (result.stock_times if is_stock else result.xsample_times).append(seconds)
    return result


def time_targets(comparison: Comparison, build: Callable, device: torch.device, repeats: int) -> Comparison:
    """Time X-Sample's target building alone (``build()``), ``repeats`` times after a warm-up call: the part
    of X-Sample's time that the stock loss has no counterpart of."""
    build()
    comparison.targets_times = [timed(build, device) for _ in range(max(2, repeats))]
    return comparison


def backward_step(call: Callable, leaves, autocast_dtype=None) -> torch.Tensor:
    """One forward+backward of ``call(*fresh leaves)``, the leaves detached copies that need gradient,
    under ``torch.autocast(autocast_dtype)`` when given (as ``--precision amp_bf16`` runs a loss)."""
    fresh = [t.detach().requires_grad_(True) for t in leaves]
    device_type = fresh[0].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        loss = call(*fresh)
    loss.backward()
    return loss.detach()
