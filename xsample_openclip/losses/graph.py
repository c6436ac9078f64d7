"""The target graphs of the X-Sample losses, built from caption embeddings: pure math, no I/O.

    S = E_rows E_cols^T                        caption cosine similarities (fp32, no gradient)
    softmax targets  P_ij = softmax_j(S_ij / tau_s)          rows sum to 1 (--loss xsample)
    kernel targets   t_ij = exp((S_ij - 1) / tau_s)           t_ii = 1, in (0, 1] (--loss xsample-siglip)

Caption embeddings are unit rows (``unit_captions`` renormalises them in fp32 or fp64, so a float16
table row counts as exactly as long as an online one).

Both are built in fp32 with autocast off (a small tau_s overflows fp16/bf16) and without gradient: the
graph is fixed side data. S is accurate to ~1e-6 on every device (on CUDA from split float16 pieces,
``split_half_similarities``), and S = 1 exactly for a caption and itself and for identical captions
(``IDENTICAL``), so at any tau_s t_ii = 1, identical captions are full positives (kernel) or share their
row's mass evenly (softmax), and as tau_s -> 0 with distinct captions both targets become the identity:
CLIP's and SigLIP's own targets.

Graph options (``--xsample-graph-*``, docs/targets.md):
- centring (``centre_captions``): E <- unit((E - mu) W) before the cosine, mu the mean caption embedding
  of the run's calibration sample and W an optional ZCA whitening from the same sample
  (``centring_statistics``): what all captions share (a template) stops counting as similarity. A row
  stays a unit row, so S_ii = 1 and identical captions stay identical (``IDENTICAL`` holds as before).
- top-k (``topk``): row i keeps the K columns of largest S_ij, its own column included (S_ii = 1 is the
  largest), plus every column tied with the K-th value (so identical captions are never split by column
  order and the result is the same on every rank); every other column gets target 0. Columns are the
  global batch, so the rule is row-local. K >= the number of columns changes nothing.
"""
from typing import Optional

import torch

from .blockwise import autocast_off, blocks

#: Caption pairs this close to cosine 1 are the same caption up to rounding: their similarity is set to
#: exactly 1, so a caption and itself, and identical captions, are exact positives on every device. Identical
#: captions have bit-identical rows (both embedders give one row per token key) and every similarity here is
#: accurate to ~1e-6 (``split_half_similarities``, fp32, fp64), 10x inside this margin.
IDENTICAL = 1e-5

#: Devices whose float32 similarities come from ``split_half_similarities`` (float16 tensor-core GEMM,
#: accurate to ~1e-6) rather than an fp32 GEMM: on CUDA it runs on float16 tensor cores instead of IEEE
#: fp32 (not yet timed on a GPU), and stays exact where a plain fp32 GEMM under OpenCLIP's TF32 mode
#: (``allow_tf32 = True``) or a plain float16 GEMM errs by ~1e-4 (more than ``IDENTICAL``; at tau_s
#: 1e-4 a factor e on a target).
#: Tests add "cpu" to run the same numerics on the host.
SPLIT_HALF_DEVICES = frozenset({"cuda"})

#: 2^11 lifts a float16 rounding residual (|lo| <= 2^-11 |x|) to its row's scale; exact (a power of two).
_LIFT = 2.0 ** 11


def _half_gemm(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left @ right^T of float16 matrices with float32 accumulation and output (on the host: the same
    arithmetic, as products of two float16 numbers are exact in float32)."""
    if left.is_cuda:
        return torch.mm(left, right.T, out_dtype=torch.float32)
    return left.float() @ right.float().T


def _split(x: torch.Tensor):
    """(hi, lo), float16, with x = hi + lo / 2^11 to 2^-22 |x|: x - hi is exact in fp32, lo rounds it."""
    hi = x.half()
    return hi, (x - hi.float()).mul_(_LIFT).half()


def split_half_similarities(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """rows @ columns^T of float32 unit rows (|x| <= 1) from one float16 GEMM, to ~1e-6 (fp32: ~5e-7).

    With x = hi + lo (float16 head, residual), S = hi.hi' + hi.lo' + lo.hi' + lo.lo'; the last term is
    below 2^-22 and dropped. The other three are one GEMM over concatenated pieces, all scaled by 2^11
    (exact) so they share one fp32 accumulator: 2^11 S = [2^11 hi, hi, lo~] . [hi', lo~', hi'] with
    lo~ = 2^11 lo. A single float16 GEMM would round the inputs and err by up to ~1.4e-4.
    """
    r_hi, r_lo = _split(rows)
    c_hi, c_lo = (r_hi, r_lo) if columns is rows else _split(columns)
    left = torch.cat([r_hi * _LIFT, r_hi, r_lo], dim=1)
    right = torch.cat([c_hi, c_lo, c_hi], dim=1)
    return _half_gemm(left, right).mul_(1.0 / _LIFT)


def caption_similarities(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """rows @ columns^T of unit rows in float32 (float64 for float64 inputs), without gradient, with
    every entry within ``IDENTICAL`` of 1 (a caption and itself, identical captions) set to exactly 1."""
    dtype = torch.promote_types(rows.dtype, torch.float32)
    if dtype == torch.float32 and rows.device.type in SPLIT_HALF_DEVICES:
        similarity = split_half_similarities(rows.float(), columns.float())
    else:
        similarity = rows.to(dtype) @ columns.to(dtype).T
    for block in blocks(*similarity.shape):
        part = similarity[block]
        part.masked_fill_(part >= 1.0 - IDENTICAL, 1.0)
    return similarity


def softmax_targets(
    row_embeddings: torch.Tensor,
    all_embeddings: torch.Tensor,
    tau_s: float,
    row_offset: int = 0,
    clip_weight: float = 0.0,
    mask_self: bool = False,
    topk: Optional[int] = None,
) -> torch.Tensor:
    """Row-softmax of caption similarities: rows are this rank's anchors, columns the global batch.

    Row r's own sample is column ``row_offset + r``. ``clip_weight`` mixes in the identity (CLIP's
    hard target); ``mask_self`` drops the self-pairs (the image-image term); ``topk`` keeps each row's
    K nearest columns (module docstring; chosen before the self-pair is dropped). Built in place: the
    similarity matrix becomes the target, with only row-block temporaries.
    """
    with torch.no_grad(), autocast_off(row_embeddings.device):
        target = caption_similarities(row_embeddings, all_embeddings)
        if topk is not None:
            mask_outside_topk(target, topk_thresholds(target, topk), float("-inf"))
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


def unit_captions(embeddings: torch.Tensor) -> torch.Tensor:
    """Caption embeddings as exact unit rows, in float32 (float64 stays float64), without gradient."""
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    with torch.no_grad():
        return torch.nn.functional.normalize(embeddings.detach().to(dtype), dim=-1)


def kernel_targets(row_embeddings: torch.Tensor, column_embeddings: torch.Tensor, tau_s: float,
                   thresholds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """t_ij = exp((S_ij - 1) / tau_s) for unit rows: 1 for a caption and itself (or an identical one,
    ``IDENTICAL``: S = 1 exactly, so t = exp(0) = 1 exactly), decaying with dissimilarity.

    Each pair's target depends on its two captions only, never on the rest of the batch, so the
    blocks of a distributed sigmoid loss can be built independently. ``thresholds`` (``topk_thresholds``
    of each row over the global columns): pairs below their row's threshold get target 0 (top-k).
    """
    with torch.no_grad(), autocast_off(row_embeddings.device):
        similarity = caption_similarities(row_embeddings, column_embeddings)
        outside = None if thresholds is None else similarity < thresholds.to(similarity.dtype)
        target = similarity.sub_(1.0).div_(tau_s).exp_()
        return target if outside is None else target.masked_fill_(outside, 0.0)


# --- top-k ------------------------------------------------------------------------------------------------
#: The smallest K: K = 1 would leave a row only itself (CLIP's hard target, or no column at all once the
#: image-image term drops the self-pair); that target is --xsample-clip-weight 1.
MIN_TOPK = 2


def check_topk(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_TOPK:
        raise ValueError(f"top-k must be an integer >= {MIN_TOPK}, got {k!r}")


def topk_thresholds(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's K-th largest similarity ``[rows, 1]`` (-inf when K >= the columns: nothing is cut)."""
    check_topk(k)
    if k >= similarity.shape[1]:
        return torch.full((similarity.shape[0], 1), float("-inf"), dtype=similarity.dtype,
                          device=similarity.device)
    return similarity.topk(k, dim=1).values[:, -1:].clone()


def mask_outside_topk(similarity: torch.Tensor, thresholds: torch.Tensor, fill: float) -> torch.Tensor:
    """In place: ``fill`` wherever a row's similarity is below its threshold (ties with the K-th are kept)."""
    return similarity.masked_fill_(similarity < thresholds.to(similarity.dtype), fill)


# --- centring (and whitening) ------------------------------------------------------------------------------
#: ZCA whitening divides by sqrt(lambda + WHITEN_RIDGE * mean(lambda)): a sample of m captions has at most
#: m - 1 directions of variance (a few hundred distinct captions, fewer than MiniLM's 384 dimensions), and
#: without a ridge the empty directions (noise) of a caption outside the sample would dominate its cosine.
WHITEN_RIDGE = 0.1


def centring_statistics(embeddings: torch.Tensor, whiten: bool = False):
    """(mean ``[D]``, whitening ``[D, D]`` or None) of a sample of caption embeddings (unit rows), in
    float64: the mean caption, and the ZCA matrix V diag(1 / sqrt(lambda + ridge)) V^T of the centred
    sample's covariance (``WHITEN_RIDGE``)."""
    e = unit_captions(embeddings).double()
    if e.shape[0] < 2:
        raise ValueError(f"centring needs at least 2 captions, got {e.shape[0]}")
    mean = e.mean(dim=0)
    # trace of unit rows' covariance: 1 - |mean|^2, 0 for one distinct caption, which then is the mean
    # caption and would have no direction left after centring (``centre_captions`` refuses it)
    if not 1.0 - float(mean @ mean) > 1e-12:
        kind = "whitening" if whiten else "centring"
        raise ValueError(f"{kind} needs captions that differ: the sample's covariance is 0 (one distinct caption)")
    if not whiten:
        return mean, None
    x = e - mean
    cov = x.T @ x / e.shape[0]
    eigenvalues, vectors = torch.linalg.eigh(cov)
    eigenvalues = eigenvalues.clamp_min(0.0)
    ridge = WHITEN_RIDGE * float(eigenvalues.mean())
    return mean, (vectors * (1.0 / torch.sqrt(eigenvalues + ridge))) @ vectors.T


def centre_captions(embeddings: torch.Tensor, mean: torch.Tensor, whitening: Optional[torch.Tensor] = None,
                    ) -> torch.Tensor:
    """unit((E - mean) W) in float32 (float64 stays float64), without gradient. A caption equal to the
    mean has no direction left and is refused (it would be a zero row)."""
    with torch.no_grad():
        e = unit_captions(embeddings)
        x = e - mean.to(e.device, e.dtype)
        if whitening is not None:
            x = x @ whitening.to(e.device, e.dtype)
        norms = x.norm(dim=-1)
        if bool((norms <= 1e-6).any()):  # only reached by a caption equal to the mean caption
            raise ValueError("a caption embedding equals the mean caption of the centring statistics: it has "
                             "no direction left after centring")
        return x / norms[:, None]


def statistics_digest(mean: torch.Tensor, whitening: Optional[torch.Tensor]) -> str:
    """A short hash of the statistics (float64 bytes), recorded in params.txt and checked on resume."""
    import hashlib

    h = hashlib.sha256(mean.double().cpu().numpy().tobytes())
    if whitening is not None:
        h.update(whitening.double().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# --- the hard-target schedule --------------------------------------------------------------------------------
CLIP_WEIGHT_SCHEDULES = ("constant", "linear-down", "linear-up")


def clip_weight_at(schedule: str, weight: float, epoch: int, epochs: int) -> float:
    """The hard-target weight of epoch ``epoch`` (0-based) of ``epochs``: ``constant`` w; ``linear-down``
    w (1 - p) (hard early, soft late); ``linear-up`` w p; with p = epoch / (epochs - 1), from 0 at the
    first epoch to 1 at the last (epochs >= 2)."""
    if schedule not in CLIP_WEIGHT_SCHEDULES:
        raise ValueError(f"clip-weight schedule must be one of {CLIP_WEIGHT_SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return weight
    if epochs < 2 or not 0 <= epoch < epochs:
        raise ValueError(f"a {schedule} clip-weight schedule needs epochs >= 2 and 0 <= epoch < epochs, got "
                         f"epoch {epoch} of {epochs}")
    progress = epoch / (epochs - 1)
    return weight * (1.0 - progress if schedule == "linear-down" else progress)
