"""Block-wise helpers the fused losses share: block slicing, matmul dtypes under autocast, accumulation.

The fused losses walk their n x N matrices in blocks (of rows, or of columns) of at least
``BLOCK_ELEMENTS`` elements and at most 1/``MAX_BLOCKS`` of the matrix when that is larger, so their
temporaries stay a fraction of one full matrix while each block is still large enough to run at full
speed.
"""
import contextlib

import torch

BLOCK_ELEMENTS = 1 << 18
MAX_BLOCKS = 8


def blocks(n: int, other: int):
    """Slices of a dimension of length n whose blocks, times ``other``, stay a fraction of the matrix."""
    size = max(1, min(n, max(-(-n // MAX_BLOCKS), BLOCK_ELEMENTS // max(other, 1))))
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def autocast_off(device: torch.device):
    """A context with autocast disabled on ``device`` (a no-op for devices without autocast, e.g. meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def matmul_dtype(x: torch.Tensor, y: torch.Tensor) -> torch.dtype:
    """The dtype ``x @ y.T`` would have here: the autocast dtype for float16/32 inputs under autocast."""
    dtype = torch.promote_types(x.dtype, y.dtype)
    device_type = x.device.type
    if dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.amp.is_autocast_available(device_type) \
            and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def as_scalar(value, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 0-d tensor of ``dtype`` on ``like``'s device (a Python number or a 0/1-element tensor)."""
    if not torch.is_tensor(value):
        value = torch.tensor(float(value), device=like.device)
    return value.to(dtype).reshape(())


def accumulate_mm(total, a, b, acc_dtype, n_blocks):
    """total + a @ b: a single block straight in the matmul dtype, several summed in acc_dtype."""
    if n_blocks == 1:
        return a @ b
    if total is None:
        total = torch.zeros(a.shape[0], b.shape[1], dtype=acc_dtype, device=a.device)
    if total.dtype == a.dtype:
        return total.addmm_(a, b)
    return total.add_(a @ b)


def scaled(sim_b, s):
    """s * sim_b as a new tensor in the dtype of s (an fp32 copy of a bf16 block, then scaled)."""
    if sim_b.dtype != s.dtype:
        return sim_b.to(s.dtype).mul_(s)
    return sim_b * s
