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
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import gather_features

#: Key under which the training loop hands the batch's token ids to the loss (see patches/).
TOKENS_KEY = "xsample_tokens"


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
    small tau_s overflows fp16/bf16, and without gradient: the target graph is fixed side data.
    """
    with torch.no_grad(), torch.autocast(row_embeddings.device.type, enabled=False):
        dtype = torch.promote_types(row_embeddings.dtype, torch.float32)
        sim = row_embeddings.to(dtype) @ all_embeddings.to(dtype).T
        logits = sim.div_(tau_s)
        rows = torch.arange(sim.shape[0], device=sim.device)
        if mask_self:
            logits[rows, rows + row_offset] = float("-inf")
        target = logits.softmax(dim=1)
        if clip_weight:
            target.mul_(1.0 - clip_weight)
            target[rows, rows + row_offset] += clip_weight
    return target


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of CE(target_row, softmax(logits_row)), in fp32 (or fp64) even under autocast."""
    logits = _at_least_fp32(logits)
    return F.cross_entropy(logits, target.to(logits.dtype))


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
        tau_s: float = 0.1,
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
        logits_per_image = logit_scale * row_image @ all_text.T
        if distributed_local or self.world_size == 1:
            logits_per_text = logit_scale * row_text @ all_image.T
        else:
            logits_per_text = logits_per_image.T
        contrastive = (soft_cross_entropy(logits_per_image, target)
                       + soft_cross_entropy(logits_per_text, target)) / 2
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
