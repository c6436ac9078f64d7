"""The target graphs of the X-Sample losses, built from caption embeddings: pure math, no I/O.

    S = E_rows E_cols^T                        caption cosine similarities (fp32, no gradient)
    softmax targets  P_ij = softmax_j(S_ij / tau_s)          rows sum to 1 (--loss xsample)
    kernel targets   t_ij = exp((S_ij - 1) / tau_s)           t_ii = 1, in (0, 1] (--loss xsample-siglip)

Caption embeddings are unit rows (``unit_captions`` renormalises them in fp32 or fp64, so a float16
table row counts as exactly as long as an online one).

Both are built in fp32 with autocast off (a small tau_s overflows fp16/bf16) and without gradient: the
graph is fixed side data. As tau_s -> 0 with distinct captions both become the identity: CLIP's and
SigLIP's own targets.
"""
import torch

from .blockwise import autocast_off, blocks

#: On CUDA, caption similarities are one float16 GEMM with float32 output (fp32 accumulation) instead
#: of an fp32 GEMM, which GPUs run an order of magnitude slower than half precision. The inputs are unit
#: vectors (|S| <= 1, nothing overflows); rounding them to float16 moves S by ~1e-4, less than a
#: float16 table (the precompute default) already does. False: plain fp32 everywhere.
FAST_CUDA_SIMILARITIES = True


def caption_similarities(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """rows @ columns^T in float32 (float64 for float64 inputs), without gradient."""
    dtype = torch.promote_types(rows.dtype, torch.float32)
    if FAST_CUDA_SIMILARITIES and rows.is_cuda and dtype == torch.float32:
        try:
            return torch.mm(rows.half(), columns.half().T, out_dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):
            pass
    return rows.to(dtype) @ columns.to(dtype).T


def softmax_targets(
    row_embeddings: torch.Tensor,
    all_embeddings: torch.Tensor,
    tau_s: float,
    row_offset: int = 0,
    clip_weight: float = 0.0,
    mask_self: bool = False,
) -> torch.Tensor:
    """Row-softmax of caption similarities: rows are this rank's anchors, columns the global batch.

    Row r's own sample is column ``row_offset + r``. ``clip_weight`` mixes in the identity (CLIP's
    hard target); ``mask_self`` drops the self-pairs (the image-image term). Built in place: the
    similarity matrix becomes the target, with only row-block temporaries.
    """
    with torch.no_grad(), autocast_off(row_embeddings.device):
        target = caption_similarities(row_embeddings, all_embeddings)
        target.div_(tau_s)
        if mask_self or clip_weight:
            rows = torch.arange(target.shape[0], device=target.device)
        if mask_self:
            target[rows, rows + row_offset] = float("-inf")
        for block in blocks(*target.shape):
            target[block] = target[block].softmax(dim=1)
        if clip_weight:
            target.mul_(1.0 - clip_weight)
            target[rows, rows + row_offset] += clip_weight
    return target


#: Caption pairs this close to cosine 1 are the same caption up to rounding: their kernel target is 1.
IDENTICAL = 1e-5


def unit_captions(embeddings: torch.Tensor) -> torch.Tensor:
    """Caption embeddings as exact unit rows, in float32 (float64 stays float64), without gradient."""
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    with torch.no_grad():
        return torch.nn.functional.normalize(embeddings.detach().to(dtype), dim=-1)


def kernel_targets(row_embeddings: torch.Tensor, column_embeddings: torch.Tensor, tau_s: float) -> torch.Tensor:
    """t_ij = exp((S_ij - 1) / tau_s) for unit rows: 1 for a caption and itself (or an identical one,
    ``IDENTICAL``), decaying with dissimilarity.

    Each pair's target depends on its two captions only, never on the rest of the batch, so the
    blocks of a distributed sigmoid loss can be built independently.
    """
    with torch.no_grad(), autocast_off(row_embeddings.device):
        similarity = caption_similarities(row_embeddings, column_embeddings)
        identical = similarity >= 1.0 - IDENTICAL
        target = similarity.sub_(1.0).div_(tau_s).exp_()
        return target.masked_fill_(identical, 1.0)
