"""The X-Sample contrastive loss: CLIP's cross-entropy against a soft caption-similarity graph.

Pure math, no I/O. For a global batch of N samples with L2-normalised image features I, text
features T, logit scale s and frozen caption embeddings E (unit rows):

    S = E E^T                                   caption cosine similarities
    P = row_softmax(S / tau_s)                  soft target graph (fp32, no gradient)
    P <- (1 - w_clip) P + w_clip Id             optional mix with CLIP's hard target
    L_i2t = mean_i CE(P_i, softmax_j(s I_i . T_j))
    L_t2i = mean_i CE(P_i, softmax_j(s T_i . I_j))    the same rows: S is symmetric, P^T is not a target
    L     = (L_i2t + L_t2i) / 2
          + w_img * mean_i CE(P'_i, softmax_{j != i}(s I_i . I_j))   P': P with the diagonal masked

Distributed training follows OpenCLIP's ``ClipLoss`` exactly (same gather, same gradient semantics
for ``local_loss`` / ``gather_with_grad``); caption embeddings are gathered without gradient in the
same rank order, so each rank's rows see the global columns.

Cost (``python -m xsample_openclip.bench`` measures it against ``ClipLoss``). The contrastive term
is one fused autograd function: ``_SquareSoftClip`` when both directions share one logits matrix (one
process, or the global loss: the text->image logits are the transpose of the image->text ones, as in
ClipLoss's global mode, so one similarity matmul and one pair of gradient matmuls serve both
directions), ``_RowSoftCE`` per direction with ``--local-loss`` (local rows against global columns).
They keep only the raw similarities x y^T and the target P for backward (P is shared by both
directions, never copied), walk the n x N matrices in blocks so every other buffer is block-sized,
and use

    CE(P_i, softmax(z_i)) = r_i * logsumexp(z_i) - sum_j P_ij z_ij,   r_i = sum_j P_ij (= 1 here)
    dL/dz_i              = (r_i * softmax(z_i) - P_i) / n

so a soft target costs what a hard label costs; only building P (an n x N x 384 matmul and a softmax)
is extra. ``soft_cross_entropy`` and ``_masked_soft_cross_entropy`` remain as plain autograd references
(the optional image-image term still uses them).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import gather_features

#: Key under which the training loop hands the batch's token ids to the loss (see patches/).
TOKENS_KEY = "xsample_tokens"

#: The fused loss walks its n x N matrices in blocks (of rows, or of columns) of at least this many
#: elements and at most 1/MAX_BLOCKS of the matrix when that is larger, so its temporaries stay a
#: fraction of one full matrix while each block is still large enough to run at full speed.
BLOCK_ELEMENTS = 1 << 18
MAX_BLOCKS = 8


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


def soft_targets(
    row_embeddings: torch.Tensor,
    all_embeddings: torch.Tensor,
    tau_s: float,
    row_offset: int = 0,
    clip_weight: float = 0.0,
    mask_self: bool = False,
) -> torch.Tensor:
    """Row-softmax of caption similarities: rows are this rank's anchors, columns the global batch.

    Row r's own sample is column ``row_offset + r``. Computed in fp32 with autocast off, because a
    small tau_s overflows fp16/bf16, and without gradient: the target graph is fixed side data
    (on CUDA the similarities come from fp16 inputs, see ``FAST_CUDA_SIMILARITIES``). Built in
    place: the similarity matrix becomes the target, with only row-block temporaries.
    """
    with torch.no_grad(), torch.autocast(row_embeddings.device.type, enabled=False):
        target = caption_similarities(row_embeddings, all_embeddings)
        target.div_(tau_s)
        if mask_self or clip_weight:
            rows = torch.arange(target.shape[0], device=target.device)
        if mask_self:
            target[rows, rows + row_offset] = float("-inf")
        for block in _blocks(*target.shape):
            target[block] = target[block].softmax(dim=1)
        if clip_weight:
            target.mul_(1.0 - clip_weight)
            target[rows, rows + row_offset] += clip_weight
    return target


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of CE(target_row, softmax(logits_row)), in fp32 (or fp64) even under autocast.

    The plain autograd reference of what the fused functions below compute.
    """
    logits = _at_least_fp32(logits)
    return F.cross_entropy(logits, target.to(logits.dtype))


# --- fused soft-target cross-entropy ------------------------------------------------------------
#
# Both functions below work on the raw similarities sim = x y^T (saved for backward, in the matmul
# dtype) and never materialise a full-size logits, softmax or gradient matrix: every elementwise step
# runs on one block at a time, with z = s * sim formed on the fly in a block buffer and shifted for
# a stable exp. ``shift`` vectors fold constants into that one pass:
#   forward:  logsumexp_i = m_i + log sum_j exp(s sim_ij - m_i)
#   backward: r_i softmax_ij = exp(s sim_ij - (lse_i - log r_i))
# and the scalar grad_out / n is applied to the n x d feature gradients, not to the n x N block.

def _matmul_dtype(x: torch.Tensor, y: torch.Tensor) -> torch.dtype:
    """The dtype ``x @ y.T`` would have here: the autocast dtype for float16/32 inputs under autocast."""
    dtype = torch.promote_types(x.dtype, y.dtype)
    device_type = x.device.type
    if dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def _prepare(x, y, scale, target):
    """Cast the features for the matmul (as autocast would), the scale and target for accumulation."""
    mm_dtype = _matmul_dtype(x, y)
    acc_dtype = torch.promote_types(mm_dtype, torch.float32)
    if not torch.is_tensor(scale):
        scale = torch.tensor(float(scale), device=x.device)
    return x.to(mm_dtype), y.to(mm_dtype), scale.to(acc_dtype).reshape(()), target.to(acc_dtype)


def _blocks(n: int, other: int):
    """Slices of a dimension of length n whose blocks, times ``other``, stay a fraction of the matrix."""
    size = max(1, min(n, max(-(-n // MAX_BLOCKS), BLOCK_ELEMENTS // max(other, 1))))
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _finite(m):
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _scaled(sim_b, s):
    """s * sim_b as a new tensor in the dtype of s (an fp32 copy of a bf16 block, then scaled)."""
    if sim_b.dtype != s.dtype:
        return sim_b.to(s.dtype).mul_(s)
    return sim_b * s


def _max_logit(sim_b, s, dim):
    """max over ``dim`` of s * sim_b (either sign of s), finite, in the dtype of s; keepdim."""
    high = sim_b.amax(dim=dim, keepdim=True).to(s.dtype)
    low = sim_b.amin(dim=dim, keepdim=True).to(s.dtype)
    return _finite(torch.maximum(high * s, low * s))


def _exp_shifted(sim_b, s, shift, out=None):
    """exp(s * sim_b - shift) in the dtype of s, as one new (or the ``out``) block-sized buffer."""
    if out is None:
        out = _scaled(sim_b, s)
    elif sim_b.dtype != s.dtype:
        out.copy_(sim_b).mul_(s)
    else:
        torch.mul(sim_b, s, out=out)
    return out.sub_(shift).exp_()


def _sum_product(target, sim):
    """sum(target * sim) over two [n, N] matrices: contiguous row blocks, bf16 blocks cast on the fly."""
    total = torch.zeros((), dtype=target.dtype, device=target.device)
    for rows in _blocks(*sim.shape):
        t, m = target[rows], sim[rows]
        if m.dtype != t.dtype:
            m = m.to(t.dtype)
        if t.is_contiguous() and m.is_contiguous():
            total += torch.vdot(t.reshape(-1), m.reshape(-1))
        else:
            total += (t * m).sum()
    return total


def _online_lse_update(running_max, running_sum, sim_b, s, dim):
    """One block of a streaming logsumexp along ``dim`` (running max, rescaled running sum)."""
    new_max = torch.maximum(running_max, _max_logit(sim_b, s, dim))
    running_sum.mul_(torch.exp(running_max - new_max)).add_(_exp_shifted(sim_b, s, new_max).sum(dim, keepdim=True))
    return new_max, running_sum


def _accumulate_mm(total, a, b, acc_dtype, n_blocks):
    """total + a @ b: a single block straight in the matmul dtype, several summed in acc_dtype."""
    if n_blocks == 1:
        return a @ b
    if total is None:
        total = torch.zeros(a.shape[0], b.shape[1], dtype=acc_dtype, device=a.device)
    if total.dtype == a.dtype:
        return total.addmm_(a, b)
    return total.add_(a @ b)


def _log_or_zero(row_sums, like):
    return torch.zeros((), dtype=like.dtype, device=like.device) if row_sums is None else row_sums.log()


def _weighted_sum(row_sums, values):
    return values.sum() if row_sums is None else row_sums @ values


class _SquareSoftClip(torch.autograd.Function):
    """(CE_rows(z, P) + CE_cols(z, P)) / 2 with z = s x y^T square: both directions from one matmul.

    Column j of z holds text j's logits over the images and its target is row j of P; ``sym_target``
    is P + P^T, all that both directions need besides the row sums r of P (None: all ones). Row blocks.
    """

    @staticmethod
    def forward(ctx, x, y, scale, sym_target, row_sums):
        with torch.autocast(x.device.type, enabled=False):
            n = x.shape[0]
            sim = x @ y.T
            s = scale.detach()
            acc = sym_target.dtype
            lse_rows = torch.empty(n, dtype=acc, device=x.device)
            col_max = torch.full((1, n), float("-inf"), dtype=acc, device=x.device)
            col_sum = torch.zeros((1, n), dtype=acc, device=x.device)
            dot = _sum_product(sym_target, sim)
            for block in _blocks(n, n):
                sim_b = sim[block]
                m = _max_logit(sim_b, s, 1)
                lse_rows[block] = _exp_shifted(sim_b, s, m).sum(1).log_().add_(m.squeeze(1))
                col_max, col_sum = _online_lse_update(col_max, col_sum, sim_b, s, 0)
            lse_cols = (col_max + col_sum.log()).squeeze(0)
            loss = (_weighted_sum(row_sums, lse_rows) + _weighted_sum(row_sums, lse_cols) - s * dot) / (2 * n)
        ctx.save_for_backward(x, y, scale, sym_target, row_sums, sim, lse_rows, lse_cols)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, y, scale, sym_target, row_sums, sim, lse_rows, lse_cols = ctx.saved_tensors
        need_x, need_y, need_s = ctx.needs_input_grad[:3]
        with torch.autocast(x.device.type, enabled=False):
            n = x.shape[0]
            s = scale.detach()
            acc = sym_target.dtype
            log_r = _log_or_zero(row_sums, lse_rows)
            shift_rows = (lse_rows - log_r)[:, None]
            shift_cols = (lse_cols - log_r)[None, :]
            blocks = _blocks(n, n)
            gy = torch.empty_like(x) if (need_x or need_s) else None   # g @ y, row by row
            grad_y = None
            other = None
            for block in blocks:
                sim_b = sim[block]
                g = _exp_shifted(sim_b, s, shift_rows[block])
                other = _exp_shifted(sim_b, s, shift_cols, out=None if other is None or other.shape != g.shape
                                     else other)
                g.add_(other).sub_(sym_target[block])          # dL/dz * 2n / grad_out, these rows
                g = g.to(x.dtype)
                if gy is not None:
                    torch.mm(g, y, out=gy[block])
                if need_y:
                    grad_y = _accumulate_mm(grad_y, g.T, x[block], acc, len(blocks))
                del g
            del other
            return _finish(grad_out.to(acc) / (2 * n), s, x, y, gy, grad_y, need_x, need_y, need_s)


def _finish(coef, s, x, y, gy, grad_y, need_x, need_y, need_s):
    """Scale the unscaled products by s * grad_out / n; d loss / d s = coef * sum_i x_i . (g y)_i."""
    grad_s = coef * torch.vdot(x.reshape(-1).to(coef.dtype), gy.reshape(-1).to(coef.dtype)) if need_s else None
    grad_x = gy.mul_((coef * s).to(gy.dtype)) if need_x else None
    if need_y:
        grad_y = grad_y.mul_((coef * s).to(grad_y.dtype)).to(y.dtype)
    return grad_x, grad_y, grad_s, None, None


class _RowSoftCE(torch.autograd.Function):
    """mean_i CE(P_i, softmax_j(z_ij)) with z = s x y^T: one direction, x local rows, y global columns.

    Column blocks (n is the local batch, N the global one): each block's x gradient is a full-depth
    product accumulated over blocks, its y gradient rows are written once.
    """

    @staticmethod
    def forward(ctx, x, y, scale, target, row_sums):
        with torch.autocast(x.device.type, enabled=False):
            n, big = x.shape[0], y.shape[0]
            sim = x @ y.T
            s = scale.detach()
            acc = target.dtype
            row_max = torch.full((n, 1), float("-inf"), dtype=acc, device=x.device)
            row_sum = torch.zeros((n, 1), dtype=acc, device=x.device)
            dot = _sum_product(target, sim)
            for cols in _blocks(big, n):
                row_max, row_sum = _online_lse_update(row_max, row_sum, sim[:, cols], s, 1)
            lse_rows = (row_max + row_sum.log()).squeeze(1)
            loss = (_weighted_sum(row_sums, lse_rows) - s * dot) / n
        ctx.save_for_backward(x, y, scale, target, row_sums, sim, lse_rows)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, y, scale, target, row_sums, sim, lse_rows = ctx.saved_tensors
        need_x, need_y, need_s = ctx.needs_input_grad[:3]
        with torch.autocast(x.device.type, enabled=False):
            n, big = x.shape[0], y.shape[0]
            s = scale.detach()
            acc = target.dtype
            shift = (lse_rows - _log_or_zero(row_sums, lse_rows))[:, None]
            blocks = _blocks(big, n)
            gy = None
            grad_y = torch.empty_like(y) if need_y else None
            for cols in blocks:
                g = _exp_shifted(sim[:, cols], s, shift).sub_(target[:, cols])   # unscaled dL/dz block
                g = g.to(x.dtype)
                if need_x or need_s:
                    gy = _accumulate_mm(gy, g, y[cols], acc, len(blocks))
                if need_y:
                    torch.mm(g.T, x, out=grad_y[cols])
                del g
            if gy is not None:
                gy = gy.to(x.dtype)
            return _finish(grad_out.to(acc) / n, s, x, y, gy, grad_y, need_x, need_y, need_s)


def _symmetrise_(target: torch.Tensor) -> torch.Tensor:
    """target <- target + target^T in place (square), one pair of row/column blocks at a time."""
    blocks = _blocks(*target.shape)
    for a, rows_a in enumerate(blocks):
        for rows_b in blocks[a:]:
            upper = target[rows_a, rows_b]
            lower = target[rows_b, rows_a]
            if rows_a == rows_b:
                upper.add_(upper.T.clone())
            else:
                saved = upper.clone()
                upper.add_(lower.T)
                lower.add_(saved.T)
    return target


def soft_clip_loss(image_features, text_features, logit_scale, target, rows_sum_to_one=False) -> torch.Tensor:
    """(mean_i CE(P_i, softmax(s I_i.T_j)) + mean_i CE(P_i, softmax(s T_i.I_j))) / 2, fused, square case.

    ``target`` (P, [N, N], no gradient) is consumed: it is overwritten in place. ``rows_sum_to_one``
    skips computing P's row sums (soft targets are row-normalised by construction).
    """
    x, y, scale, target = _prepare(image_features, text_features, logit_scale, target)
    row_sums = None if rows_sum_to_one else target.sum(dim=1)
    return _SquareSoftClip.apply(x, y, scale, _symmetrise_(target), row_sums)


def soft_row_cross_entropy(row_features, column_features, logit_scale, target,
                           rows_sum_to_one=False) -> torch.Tensor:
    """mean_i CE(P_i, softmax_j(s x_i.y_j)) for local rows x against global columns y, fused."""
    x, y, scale, target = _prepare(row_features, column_features, logit_scale, target)
    return _RowSoftCE.apply(x, y, scale, target, None if rows_sum_to_one else target.sum(dim=1))


class XSampleLoss(nn.Module):
    """X-Sample (X-CLR) loss with OpenCLIP's ``ClipLoss`` interface and distributed semantics.

    ``caption_embedder`` maps the batch's token ids ``[B, ctx]`` to unit caption embeddings
    ``[B, D]`` (see ``xsample_openclip.captions``). Callers may pass ``caption_embeddings``
    directly instead of tokens.
    """

    #: Tells the patched training loop to hand the batch's token ids to ``forward``.
    needs_tokens = True

    def __init__(
        self,
        caption_embedder=None,
        tau_s: float = 0.2,
        clip_weight: float = 0.0,
        image_weight: float = 0.0,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
    ):
        super().__init__()
        if tau_s <= 0:
            raise ValueError(f"tau_s must be > 0, got {tau_s}")
        if not 0.0 <= clip_weight <= 1.0:
            raise ValueError(f"clip_weight must be in [0, 1], got {clip_weight}")
        if image_weight < 0:
            raise ValueError(f"image_weight must be >= 0, got {image_weight}")
        self.caption_embedder = caption_embedder
        self.tau_s = tau_s
        self.clip_weight = clip_weight
        self.image_weight = image_weight
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod

    def _gather(self, image_features, text_features, caption_embeddings):
        if self.world_size == 1:
            return image_features, text_features, caption_embeddings
        all_image, all_text = gather_features(
            image_features, text_features, local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad, rank=self.rank,
            world_size=self.world_size, use_horovod=self.use_horovod,
        )
        with torch.no_grad():
            all_captions, _ = gather_features(
                caption_embeddings, caption_embeddings, local_loss=True,
                gather_with_grad=False, rank=self.rank, world_size=self.world_size,
                use_horovod=self.use_horovod,
            )
        return all_image, all_text, all_captions

    def caption_embeddings_for(self, tokens: Optional[torch.Tensor]) -> torch.Tensor:
        if tokens is None:
            raise RuntimeError(
                "XSampleLoss got no caption token ids: the xsample_openclip training hook is not "
                "active. Launch with `python -m xsample_openclip.train ...` or install the package "
                "(pip install xsample-openclip) so `python -m open_clip_train.main` loads its hook."
            )
        if self.caption_embedder is None:
            raise RuntimeError("XSampleLoss needs a caption_embedder to turn token ids into targets")
        return self.caption_embedder(tokens)

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: Optional[torch.Tensor] = None,
        output_dict: bool = False,
        xsample_tokens: Optional[torch.Tensor] = None,
        caption_embeddings: Optional[torch.Tensor] = None,
    ):
        if logit_bias is not None:
            raise ValueError("XSampleLoss is a softmax loss; a model with logit_bias (SigLIP) is not supported")
        if caption_embeddings is None:
            caption_embeddings = self.caption_embeddings_for(xsample_tokens)
        if caption_embeddings.shape[0] != image_features.shape[0]:
            raise ValueError(
                f"{caption_embeddings.shape[0]} caption embeddings for {image_features.shape[0]} images"
            )
        caption_embeddings = caption_embeddings.to(image_features.device)

        all_image, all_text, all_captions = self._gather(image_features, text_features, caption_embeddings)
        distributed_local = self.world_size > 1 and self.local_loss
        if distributed_local:
            row_image, row_text, row_captions = image_features, text_features, caption_embeddings
            row_offset = self.rank * image_features.shape[0]
        else:
            row_image, row_text, row_captions = all_image, all_text, all_captions
            row_offset = 0

        target = soft_targets(row_captions, all_captions, self.tau_s, row_offset, self.clip_weight)
        if distributed_local:
            # local rows against global columns; one target serves both directions
            contrastive = (soft_row_cross_entropy(row_image, all_text, logit_scale, target, True)
                           + soft_row_cross_entropy(row_text, all_image, logit_scale, target, True)) / 2
        else:
            # text->image logits are the transpose of image->text ones (ClipLoss's global mode)
            contrastive = soft_clip_loss(row_image, all_text, logit_scale, target, True)
        del target
        losses = {"xsample_loss": contrastive}

        if self.image_weight and all_image.shape[0] > 1:
            image_target = soft_targets(row_captions, all_captions, self.tau_s, row_offset, mask_self=True)
            image_logits = logit_scale * row_image @ all_image.T
            rows = torch.arange(image_logits.shape[0], device=image_logits.device)
            self_mask = torch.zeros_like(image_logits, dtype=torch.bool)
            self_mask[rows, rows + row_offset] = True
            image_logits = image_logits.masked_fill(self_mask, float("-inf"))
            losses["xsample_image_loss"] = self.image_weight * _masked_soft_cross_entropy(
                image_logits, image_target)

        if output_dict:
            return losses
        return sum(losses.values())


def _masked_soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft CE where masked logits are -inf and their targets exactly 0 (0 * -inf must not be NaN)."""
    log_prob = _at_least_fp32(logits).log_softmax(dim=1)
    log_prob = log_prob.masked_fill(target == 0, 0.0)
    return -(target.to(log_prob.dtype) * log_prob).sum(dim=1).mean()
