"""Fused soft-target cross-entropy for the softmax X-Sample loss (autograd functions, no N x N temporaries).

``_SquareSoftClip`` serves both directions from one similarity matmul when the logits are square (one
process, or the global loss: the text->image logits are the transpose of the image->text ones, as in
ClipLoss's global mode); ``_RowSoftCE`` is one direction, local rows against global columns
(``--local-loss``). They keep only the raw similarities x y^T and the target P for backward (P is
shared by both directions, never copied), walk the n x N matrices in blocks so every other buffer is
block-sized, and use

    CE(P_i, softmax(z_i)) = r_i * logsumexp(z_i) - sum_j P_ij z_ij,   r_i = sum_j P_ij (= 1 here)
    dL/dz_i              = (r_i * softmax(z_i) - P_i) / n

so a soft target costs what a hard label costs. ``soft_cross_entropy`` and
``masked_soft_cross_entropy`` are the plain autograd references (the image-image term uses the latter).
"""
import torch
import torch.nn.functional as F

from .blockwise import accumulate_mm as _accumulate_mm
from .blockwise import as_scalar, autocast_off, blocks as _blocks, matmul_dtype as _matmul_dtype, scaled as _scaled


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

def _prepare(x, y, scale, target):
    """Cast the features for the matmul (as autocast would), the scale and target for accumulation."""
    mm_dtype = _matmul_dtype(x, y)
    acc_dtype = torch.promote_types(mm_dtype, torch.float32)
    return x.to(mm_dtype), y.to(mm_dtype), as_scalar(scale, x, acc_dtype), target.to(acc_dtype)


def _finite(m):
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


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
        with autocast_off(x.device):
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
        with autocast_off(x.device):
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
        with autocast_off(x.device):
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
        with autocast_off(x.device):
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



def masked_soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft CE where masked logits are -inf and their targets exactly 0 (0 * -inf must not be NaN)."""
    log_prob = _at_least_fp32(logits).log_softmax(dim=1)
    log_prob = log_prob.masked_fill(target == 0, 0.0)
    return -(target.to(log_prob.dtype) * log_prob).sum(dim=1).mean()

