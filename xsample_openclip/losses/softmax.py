"""The X-Sample contrastive loss (``--loss xsample``): CLIP's cross-entropy against a soft caption graph.

Pure math, no I/O. For a global batch of N samples with L2-normalised image features I, text
features T, logit scale s and frozen caption embeddings E (unit rows):

    S = E E^T                                   caption cosine similarities
    P = row_softmax(S / tau_s)                  soft target graph (fp32, no gradient)
    P <- (1 - w_clip) P + w_clip Id             optional mix with CLIP's hard target (w_clip per epoch:
                                                --xsample-clip-weight-schedule, ``begin_epoch``)
    (--xsample-graph-topk K: each row of P keeps its K nearest captions, ``graph.py``)
    L_i2t = mean_i CE(P_i, softmax_j(s I_i . T_j))
    L_t2i = mean_i CE(P_i, softmax_j(s T_i . I_j))    the same rows: S is symmetric, P^T is not a target
    L     = (L_i2t + L_t2i) / 2
          + w_img * mean_i CE(P'_i, softmax_{j != i}(s I_i . I_j))   P': P with the diagonal masked

Two views per sample (``--xsample-views 2``: 2N interleaved image rows, rows 2i and 2i + 1 = sample i;
see ``xclr.py``): the image-text term is the mean of the term above computed for each view on its
own (view 1 against the N texts, view 2 against the N texts), and the image-image term is X-CLR over
the 2N views (``xclr.xclr_loss``: targets tiled over the views, self-pairs left out, logits s I_r . I_c).
With two identical views the image-text term is the one-view term.

Distributed training follows OpenCLIP's ``ClipLoss`` exactly (same gather, same gradient semantics
for ``local_loss`` / ``gather_with_grad``); caption embeddings are gathered without gradient in the
same rank order, so each rank's rows see the global columns. The contrastive term is fused
(``fused_softmax``): a soft target costs what a hard label costs; building P (an n x N x 384 matmul
and a softmax) is the only extra work.
"""
import logging
from typing import Optional

import torch
from open_clip.loss import gather_features

from .common import CaptionTargetLoss
from .fused_softmax import masked_soft_cross_entropy, soft_clip_loss, soft_row_cross_entropy
from .graph import CLIP_WEIGHT_SCHEDULES, clip_weight_at, softmax_targets, unit_captions
from .xclr import view_rows, views_per_caption, xclr_loss


class XSampleLoss(CaptionTargetLoss):
    """X-Sample (X-CLR) loss with OpenCLIP's ``ClipLoss`` interface and distributed semantics.

    ``caption_embedder`` maps the batch's token ids ``[B, ctx]`` (a CPU tensor) to unit caption
    embeddings ``[B, D]`` (``xsample_openclip.targets.embedders``). Callers may pass
    ``caption_embeddings`` directly instead of tokens.
    """

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
        topk: Optional[int] = None,
        clip_weight_schedule: str = "constant",
    ):
        super().__init__(caption_embedder, tau_s, rank, world_size, topk)
        if not 0.0 <= clip_weight <= 1.0:
            raise ValueError(f"clip_weight must be in [0, 1], got {clip_weight}")
        if clip_weight_schedule not in CLIP_WEIGHT_SCHEDULES:
            raise ValueError(f"clip_weight_schedule must be one of {CLIP_WEIGHT_SCHEDULES}, got {clip_weight_schedule!r}")
        self.clip_weight_schedule = clip_weight_schedule
        self.base_clip_weight = clip_weight
        if image_weight < 0:
            raise ValueError(f"image_weight must be >= 0, got {image_weight}")
        self.clip_weight = clip_weight
        self.image_weight = image_weight
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
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
        if logit_bias is not None:
            raise ValueError("XSampleLoss is a softmax loss; a model with a logit_bias (SigLIP) trains with "
                             "--loss xsample-siglip")
        if caption_embeddings is None:
            caption_embeddings = self.caption_embeddings_for(batch_tokens, image_features.device)
        if caption_embeddings.shape[0] != text_features.shape[0]:
            raise ValueError(
                f"{caption_embeddings.shape[0]} caption embeddings for {text_features.shape[0]} texts")
        views = views_per_caption(image_features.shape[0], caption_embeddings.shape[0])
        caption_embeddings = unit_captions(caption_embeddings.to(image_features.device))

        all_image, all_text, all_captions = self._gather(image_features, text_features, caption_embeddings)
        distributed_local = self.world_size > 1 and self.local_loss
        if distributed_local:
            row_image, row_text, row_captions = image_features, text_features, caption_embeddings
            row_offset = self.rank * caption_embeddings.shape[0]  # the anchors' first sample
        else:
            row_image, row_text, row_captions = all_image, all_text, all_captions
            row_offset = 0

        target = softmax_targets(row_captions, all_captions, self.tau_s, row_offset, self.clip_weight,
                                 topk=self.topk)
        contrastive = sum(  # the fused kernels consume the target: the last view gets the original
            self._image_text(view_rows(row_image, v) if views > 1 else row_image,
                             view_rows(all_image, v) if views > 1 else all_image, row_text, all_text,
                             logit_scale, target if v == views - 1 else target.clone(), distributed_local)
            for v in range(views)) / views
        del target
        losses = {"xsample_loss": contrastive}

        if self.image_weight and views > 1:
            losses["xsample_image_loss"] = self.image_weight * xclr_loss(
                row_image, all_image, row_captions, all_captions, self.tau_s, logit_scale, row_offset)
        elif self.image_weight and all_image.shape[0] > 1:
            image_target = softmax_targets(row_captions, all_captions, self.tau_s, row_offset, mask_self=True,
                                           topk=self.topk)
            image_logits = logit_scale * row_image @ all_image.T
            rows = torch.arange(image_logits.shape[0], device=image_logits.device)
            self_mask = torch.zeros_like(image_logits, dtype=torch.bool)
            self_mask[rows, rows + row_offset] = True
            image_logits = image_logits.masked_fill(self_mask, float("-inf"))
            losses["xsample_image_loss"] = self.image_weight * masked_soft_cross_entropy(
                image_logits, image_target)

        if output_dict:
            return losses
        return sum(losses.values())

    def begin_epoch(self, epoch: int, args) -> None:
        """Set this epoch's hard-target weight (--xsample-clip-weight-schedule; the loop calls this before
        each epoch's steps, so a resumed run gets its epoch's weight)."""
        schedule = self.clip_weight_schedule
        if schedule == "constant":
            return  # the weight never changes
        self.clip_weight = clip_weight_at(schedule, self.base_clip_weight, epoch, args.epochs)
        if self.rank == 0:
            logging.info(f"X-Sample clip weight for epoch {epoch}: {self.clip_weight:.4g} ({schedule} from "
                         f"{self.base_clip_weight} over {args.epochs} epochs)")

    @staticmethod
    def _image_text(row_image, all_image, row_text, all_text, logit_scale, target, distributed_local):
        if distributed_local:
            # local rows against global columns; one target serves both directions
            return (soft_row_cross_entropy(row_image, all_text, logit_scale, target, True)
                    + soft_row_cross_entropy(row_text, all_image, logit_scale, target, True)) / 2
        # text->image logits are the transpose of image->text ones (ClipLoss's global mode)
        return soft_clip_loss(row_image, all_text, logit_scale, target, True)
