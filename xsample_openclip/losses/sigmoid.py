"""The sigmoid X-Sample loss (``--loss xsample-siglip``): SigLIP's pairwise loss against soft caption targets.

SigLIP (Zhai et al. 2023) scores every image-text pair on its own: z_ij = s I_i.T_j + b, with label +1
on the diagonal and -1 elsewhere, loss = -sum_ij log sigmoid(label_ij z_ij) / n. X-Sample replaces the
labels by a soft target t_ij in [0, 1] built from caption similarities and uses the binary
cross-entropy with it:

    loss = sum_ij [softplus(z_ij) - t_ij z_ij] / n           (= SigLIP's loss when t = Id)
    kernel target  (default): t_ij = exp((S_ij - 1) / tau_s)        t_ii = 1; each pair's target
                              depends only on its two captions, so identical captions are full
                              positives and a remote block needs only the remote captions
    softmax target:           t_ij = softmax_j(S_ij / tau_s) over the global batch (the X-CLR row
                              distribution; t_ii < 1, needs every caption of the batch for each row)

tau_s -> 0 with distinct captions gives t = Id, i.e. OpenCLIP's ``SigLipLoss`` exactly. The model's
``logit_scale`` and ``logit_bias`` are used as ``SigLipLoss`` uses them, and the distributed schedule is
``SigLipLoss``'s own in every ``dist_impl`` (bidir, shift, reduce, gather): the same exchanges of text
features with gradient, in the same order, and alongside each the caption embeddings of those texts
without gradient, so every block of the pairwise loss gets its soft targets.

Each block is one fused autograd function: it keeps the raw similarities and the target for backward
(dL/dz = sigmoid(z) - t) and walks the block in row chunks, so a soft target costs no more memory than
SigLIP's dense label matrix.
"""
from typing import Optional

import torch
import torch.distributed as dist
from open_clip.loss import (neighbour_exchange, neighbour_exchange_bidir, neighbour_exchange_bidir_with_grad,
                            neighbour_exchange_with_grad)

from .blockwise import accumulate_mm, as_scalar, autocast_off, blocks, matmul_dtype, scaled
from .common import CaptionTargetLoss
from .graph import caption_similarities, kernel_targets, topk_thresholds, unit_captions

TARGETS = ("kernel", "softmax")


class _SoftSigmoidBlock(torch.autograd.Function):
    """sum_ij [softplus(z_ij) - t_ij z_ij] / n with z = s x y^T + b; x: n rows, y: m columns."""

    @staticmethod
    def forward(ctx, x, y, scale, bias, target):
        with autocast_off(x.device):
            n, m = x.shape[0], y.shape[0]
            sim = x @ y.T
            s, b = scale.detach(), bias.detach()
            total = torch.zeros((), dtype=target.dtype, device=x.device)
            for rows in blocks(n, m):
                z = scaled(sim[rows], s).add_(b)
                total += torch.nn.functional.softplus(z).sum() - torch.vdot(
                    target[rows].reshape(-1), z.reshape(-1))
            loss = total / n
        ctx.save_for_backward(x, y, scale, bias, target, sim)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, y, scale, bias, target, sim = ctx.saved_tensors
        need_x, need_y, need_s, need_b = ctx.needs_input_grad[:4]
        with autocast_off(x.device):
            n, m = x.shape[0], y.shape[0]
            s, b = scale.detach(), bias.detach()
            acc = target.dtype
            coef = grad_out.to(acc) / n
            grad_x = torch.empty_like(x) if need_x else None
            grad_y = None
            grad_s = torch.zeros((), dtype=acc, device=x.device)
            grad_b = torch.zeros((), dtype=acc, device=x.device)
            row_blocks = blocks(n, m)
            for rows in row_blocks:
                g = scaled(sim[rows], s).add_(b).sigmoid_().sub_(target[rows])   # dL/dz * n, these rows
                if need_s:
                    sim_b = sim[rows] if sim.dtype == acc else sim[rows].to(acc)
                    grad_s += torch.vdot(g.reshape(-1), sim_b.reshape(-1))
                if need_b:
                    grad_b += g.sum()
                g = g.to(x.dtype)
                if need_x:
                    torch.mm(g, y, out=grad_x[rows])
                if need_y:
                    grad_y = accumulate_mm(grad_y, g.T, x[rows], acc, len(row_blocks))
                del g
            factor = coef * s
            if need_x:
                grad_x.mul_(factor.to(grad_x.dtype))
            if need_y:
                grad_y = grad_y.mul_(factor.to(grad_y.dtype)).to(y.dtype)
        return (grad_x, grad_y, (coef * grad_s).to(scale.dtype) if need_s else None,
                (coef * grad_b).to(bias.dtype) if need_b else None, None)


def soft_sigmoid_loss(image_features, text_features, logit_scale, logit_bias, target) -> torch.Tensor:
    """sum_ij [softplus(z_ij) - t_ij z_ij] / n, z = logit_scale * I T^T + logit_bias, fused (n = rows)."""
    mm_dtype = matmul_dtype(image_features, text_features)
    acc = torch.promote_types(mm_dtype, torch.float32)
    return _SoftSigmoidBlock.apply(image_features.to(mm_dtype), text_features.to(mm_dtype),
                                   as_scalar(logit_scale, image_features, acc),
                                   as_scalar(logit_bias, image_features, acc), target.to(acc))


def sigmoid_loss_reference(image_features, text_features, logit_scale, logit_bias, target) -> torch.Tensor:
    """The same loss in plain autograd (tests compare the fused function with it)."""
    logits = logit_scale * image_features @ text_features.T + logit_bias
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return (torch.nn.functional.softplus(logits) - target.to(logits.dtype) * logits).sum() / image_features.shape[0]


class XSampleSigLipLoss(CaptionTargetLoss):
    """``SigLipLoss`` with soft caption-similarity targets (see the module docstring)."""

    def __init__(self, caption_embedder=None, tau_s: float = 0.2, target: str = "kernel", rank: int = 0,
                 world_size: int = 1, dist_impl: Optional[str] = None, topk: Optional[int] = None):
        super().__init__(caption_embedder, tau_s, rank, world_size, topk)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.target = target
        self.dist_impl = dist_impl or "bidir"  # SigLipLoss's default
        if self.dist_impl not in ("bidir", "shift", "reduce", "gather"):
            raise ValueError(f"unknown dist_impl {self.dist_impl!r}")

    # --- targets ---------------------------------------------------------------------------------------
    def _row_normaliser(self, captions):
        """What a row's targets need from the whole global batch, per local row: ``(normaliser,
        thresholds)``. Softmax targets: 1 / sum_j of the (top-k) kernel; top-k: the K-th largest caption
        similarity (``graph.topk_thresholds``). (None, None) when neither is asked for."""
        if self.target != "softmax" and self.topk is None:
            return None
        if self.world_size > 1:
            gathered = [torch.empty_like(captions) for _ in range(self.world_size)]
            dist.all_gather(gathered, captions)
            columns = torch.cat(gathered)
        else:
            columns = captions
        with torch.no_grad():
            thresholds = None if self.topk is None else topk_thresholds(
                caption_similarities(captions, columns), self.topk)
            normaliser = None if self.target != "softmax" else 1.0 / kernel_targets(
                captions, columns, self.tau_s, thresholds).sum(dim=1, keepdim=True)
        return normaliser, thresholds

    def _block_target(self, row_captions, column_captions, row_info):
        normaliser, thresholds = row_info or (None, None)
        target = kernel_targets(row_captions, column_captions, self.tau_s, thresholds)
        return target if normaliser is None else target.mul_(normaliser)

    def _loss(self, image_features, text_features, logit_scale, logit_bias, row_captions, column_captions,
              normaliser):
        target = self._block_target(row_captions, column_captions, normaliser)
        return soft_sigmoid_loss(image_features, text_features, logit_scale, logit_bias, target)

    # --- the SigLipLoss schedule, with captions travelling beside the text features ----------------------
    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: Optional[torch.Tensor] = None,
        output_dict: bool = False,
        batch_tokens: Optional[torch.Tensor] = None,
        caption_embeddings: Optional[torch.Tensor] = None,
    ):
        if logit_bias is None:
            raise ValueError("--loss xsample-siglip needs a model with a logit_bias (a SigLIP model, or any "
                             "model trained with --siglip, which initialises one)")
        if caption_embeddings is None:
            caption_embeddings = self.caption_embeddings_for(batch_tokens, image_features.device)
        caps = unit_captions(caption_embeddings.to(image_features.device))
        norm = self._row_normaliser(caps)
        loss = self._loss(image_features, text_features, logit_scale, logit_bias, caps, caps, norm)
        if self.world_size > 1:
            loss = loss + self._remote_blocks(image_features, text_features, logit_scale, logit_bias, caps, norm)
        return {"xsample_siglip_loss": loss} if output_dict else loss

    def _remote_blocks(self, image_features, text_features, logit_scale, logit_bias, caps, norm):
        """The blocks against other ranks' texts, exchanged exactly as ``SigLipLoss.forward`` does."""
        def block(texts, texts_captions):
            return self._loss(image_features, texts, logit_scale, logit_bias, caps, texts_captions, norm)

        loss = 0.0
        right = (self.rank + 1) % self.world_size
        left = (self.rank - 1 + self.world_size) % self.world_size
        if self.dist_impl == "bidir":
            to_left = to_right = text_features
            caps_to_left = caps_to_right = caps
            num_bidir, remainder = divmod(self.world_size - 1, 2)
            for _ in range(num_bidir):
                received = neighbour_exchange_bidir_with_grad(left, right, to_left, to_right)
                received_caps = neighbour_exchange_bidir(left, right, caps_to_left, caps_to_right)
                for texts, texts_captions in zip(received, received_caps):
                    loss = loss + block(texts, texts_captions)
                to_left, to_right = received
                caps_to_left, caps_to_right = received_caps
            if remainder:
                texts = neighbour_exchange_with_grad(left, right, to_right)
                texts_captions = neighbour_exchange(left, right, caps_to_right)
                loss = loss + block(texts, texts_captions)
        elif self.dist_impl == "shift":
            to_right, caps_to_right = text_features, caps
            for _ in range(self.world_size - 1):
                from_left = neighbour_exchange_with_grad(left, right, to_right)
                caps_from_left = neighbour_exchange(left, right, caps_to_right)
                loss = loss + block(from_left, caps_from_left)
                to_right, caps_to_right = from_left, caps_from_left
        elif self.dist_impl == "reduce":
            for i in range(self.world_size):
                texts = torch.distributed.nn.all_reduce(text_features * (self.rank == i), dist.ReduceOp.SUM)
                texts_captions = caps * (self.rank == i)
                dist.all_reduce(texts_captions, dist.ReduceOp.SUM)
                loss = loss + float(i != self.rank) * block(texts, texts_captions)
        else:  # gather
            all_texts = torch.distributed.nn.all_gather(text_features)
            all_caps = [torch.empty_like(caps) for _ in range(self.world_size)]
            dist.all_gather(all_caps, caps)
            for i in range(self.world_size):
                loss = loss + float(i != self.rank) * block(all_texts[i], all_caps[i])
        return loss

