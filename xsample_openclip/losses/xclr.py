"""The paper's image-image X-CLR loss over two augmented views (``--loss xclr``): pure math, no I/O.

Layout: a batch of N samples with two views each gives 2N image rows, **interleaved**: rows 2i and
2i + 1 are sample i's two views (what ``[B, 2, C, H, W].flatten(0, 1)`` gives). Interleaving survives
every concatenation the trainer makes (``--accum-freq`` micro-batches, the rank-major all-gather), so
the global batch is interleaved as well and caption i always belongs to rows 2i and 2i + 1.

For unit view features Z (2N x D), unit caption embeddings E (N x D_e) and a logit temperature T:

    S      = E E^T                                caption cosine similarities (fp32, no gradient)
    S2     = S tiled over the views:  S2[2i+a, 2j+b] = S[i, j]                     (2N x 2N)
    P_r    = softmax over c != r of S2[r, c] / tau_s     target of view r: the self-pair left out
    Q_r    = softmax over c != r of Z_r . Z_c / T        prediction: the self-pair left out too
    L      = mean_r CE(P_r, Q_r)

Leaving the self-pair out of both is what makes the limits exact: with distinct captions and
tau_s -> 0, P_r is one-hot on the other view of the same sample (SimCLR's NT-Xent); with captions
shared within a class it is uniform over the other views of that class (SupCon's L_out).
The ``instance`` graph (``graph="instance"``, SimCLR) takes that first limit exactly, whatever the
captions: P_r is one-hot on r's other view (the identity caption graph), the rest of the loss unchanged.
Distributed training follows OpenCLIP's ``ClipLoss`` (``open_clip.loss.gather_features``): view
features gathered like image features (``--gather-with-grad`` / ``--local-loss`` as there), caption
embeddings gathered without gradient in the same rank order; under ``--local-loss`` each rank's rows
are its own views against the global columns.
"""
from typing import Optional

import torch
from open_clip.loss import gather_features

from .common import CaptionTargetLoss
from .fused_softmax import masked_soft_cross_entropy
from .graph import softmax_targets, unit_captions

#: Views per sample the loss expects (the two SimCLR views).
VIEWS = 2
#: Where the targets come from: the caption graph (X-CLR), or each sample alone (SimCLR's instance targets).
GRAPHS = ("captions", "instance")


def views_per_caption(image_rows: int, caption_rows: int) -> int:
    """How many view rows each caption has (1 or 2); a clear error for any other shape."""
    if caption_rows > 0 and image_rows in (caption_rows, VIEWS * caption_rows):
        return image_rows // caption_rows
    raise ValueError(
        f"{image_rows} image rows for {caption_rows} captions: expected one view per caption or two "
        "interleaved views (rows 2i and 2i + 1 = sample i; --xsample-views 2)")


def view_rows(features: torch.Tensor, view: int) -> torch.Tensor:
    """The rows of one view (0 or 1) of interleaved two-view features, in sample order."""
    return features[view::VIEWS]


def instance_targets(rows: int, columns: int, view_offset: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """SimCLR's target (the identity caption graph): anchor view r (global row ``view_offset + r``, an
    even offset) puts all its mass on its sample's other view, global column ``(view_offset + r) ^ 1``."""
    if view_offset % VIEWS:
        raise ValueError(f"view_offset must be a multiple of {VIEWS} (interleaved views), got {view_offset}")
    target = torch.zeros(rows, columns, dtype=dtype, device=device)
    anchors = torch.arange(rows, device=device)
    target[anchors, (anchors + view_offset) ^ 1] = 1.0
    return target


def xclr_loss(
    row_views: torch.Tensor,
    all_views: torch.Tensor,
    row_captions: torch.Tensor,
    all_captions: torch.Tensor,
    tau_s: float,
    logit_scale,
    row_offset: int = 0,
    graph: str = "captions",
) -> torch.Tensor:
    """Mean over the anchor views of CE(P_r, Q_r), with the self-pair left out of both.

    ``row_views`` (2n x D) are the anchor views, ``all_views`` (2N x D) the columns, both interleaved;
    ``row_captions`` (n x D_e) and ``all_captions`` (N x D_e) their unit caption embeddings. Anchor r's
    own column is ``2 * row_offset + r`` (``row_offset``: the first anchor sample's index in the global
    batch). ``logit_scale`` is 1 / T (a number or a 0-d tensor). ``graph="instance"``: P_r is one-hot
    on r's other view (SimCLR's NT-Xent); the captions' values and ``tau_s`` are then not used.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if row_views.shape[0] != VIEWS * row_captions.shape[0] or all_views.shape[0] != VIEWS * all_captions.shape[0]:
        raise ValueError(f"xclr_loss needs {VIEWS} interleaved views per caption: {row_views.shape[0]} anchor "
                         f"views for {row_captions.shape[0]} captions, {all_views.shape[0]} column views for "
                         f"{all_captions.shape[0]} captions")
    if all_views.shape[0] < 2:
        raise ValueError("xclr_loss needs at least 2 views")
    offset = VIEWS * row_offset
    if graph == "instance":
        target = instance_targets(row_views.shape[0], all_views.shape[0], offset,
                                  torch.promote_types(row_views.dtype, torch.float32), row_views.device)
    else:  # tiling the caption embeddings tiles S: one softmax over the 2N - 1 other views per row
        target = softmax_targets(row_captions.repeat_interleave(VIEWS, dim=0),
                                 all_captions.repeat_interleave(VIEWS, dim=0), tau_s, offset, mask_self=True)
    logits = logit_scale * row_views @ all_views.T
    rows = torch.arange(logits.shape[0], device=logits.device)
    self_pair = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    self_pair[rows, rows + offset] = True
    return masked_soft_cross_entropy(logits.masked_fill(self_pair, float("-inf")), target)


class XClrLoss(CaptionTargetLoss):
    """X-CLR between the two views of each image (``--loss xclr``), with OpenCLIP's loss interface.

    Called by the trainer with the model's outputs: ``image_features`` (2B interleaved views),
    ``text_features`` (unused: the text tower is locked), ``logit_scale`` and the batch's token ids.
    ``temperature``: the fixed logit temperature T (the paper's 0.1), or None for the model's learned
    ``logit_scale``. With a fixed T the model's ``logit_scale`` still enters the loss, times 0: its
    gradient is exactly 0 (it never moves), and DistributedDataParallel, which expects a gradient for
    every trainable parameter, sees it used. ``graph``: ``captions`` (X-CLR) or ``instance`` (SimCLR: the
    captions are not embedded, only counted; ``tau_s`` is not used and may be None).
    """

    def __init__(
        self,
        caption_embedder=None,
        tau_s: Optional[float] = 0.1,
        temperature: Optional[float] = 0.1,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        graph: str = "captions",
    ):
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        super().__init__(caption_embedder, tau_s, rank, world_size, uses_tau_s=graph == "captions")
        self.graph = graph
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be > 0 (or None for the model's logit scale), got {temperature}")
        self.temperature = temperature
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.use_horovod = use_horovod
        self.single_view_twice = False  # see single_process()

    def single_process(self) -> "XClrLoss":
        """The loss for one process, as the objective on the validation data: that data has one
        (unaugmented) view per image, so it is used as both views (``xclr_val_loss``)."""
        twin = super().single_process()
        twin.single_view_twice = True
        return twin

    @staticmethod
    def _sample_placeholders(batch_tokens, caption_embeddings, image_features):
        """The instance graph needs only the number of samples: one zero row per caption (gathered like
        the embeddings would be), so no caption is embedded."""
        known = caption_embeddings if caption_embeddings is not None else batch_tokens
        if known is None:
            raise RuntimeError("XClrLoss (instance graph) got no caption token ids to count the samples by: the "
                               "xsample_openclip training hook is not active (launch with python -m "
                               "xsample_openclip.launch)")
        return torch.zeros(known.shape[0], 1, dtype=torch.float32, device=image_features.device)

    def _gather(self, views, captions):
        if self.world_size == 1:
            return views, captions
        all_views, _ = gather_features(views, views, local_loss=self.local_loss,
                                       gather_with_grad=self.gather_with_grad, rank=self.rank,
                                       world_size=self.world_size, use_horovod=self.use_horovod)
        with torch.no_grad():
            all_captions, _ = gather_features(captions, captions, local_loss=True, gather_with_grad=False,
                                              rank=self.rank, world_size=self.world_size,
                                              use_horovod=self.use_horovod)
        return all_views, all_captions

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: Optional[torch.Tensor] = None,
        logit_scale: Optional[torch.Tensor] = None,
        logit_bias: Optional[torch.Tensor] = None,
        output_dict: bool = False,
        batch_tokens: Optional[torch.Tensor] = None,
        caption_embeddings: Optional[torch.Tensor] = None,
    ):
        if logit_bias is not None:
            raise ValueError("XClrLoss is a softmax loss; a model with a logit_bias (SigLIP) cannot train with it")
        if self.temperature is None and logit_scale is None:
            raise ValueError("XClrLoss with the learned temperature needs the model's logit_scale")
        if self.graph == "instance":
            caption_embeddings = self._sample_placeholders(batch_tokens, caption_embeddings, image_features)
        elif caption_embeddings is None:
            caption_embeddings = self.caption_embeddings_for(batch_tokens, image_features.device)
        views = views_per_caption(image_features.shape[0], caption_embeddings.shape[0])
        if views == 1 and self.single_view_twice:
            image_features, views = image_features.repeat_interleave(VIEWS, dim=0), VIEWS
        if views != VIEWS:
            raise ValueError(f"--loss xclr needs {VIEWS} views per sample (--xsample-views 2), got one view per "
                             f"caption ({image_features.shape[0]} images): single-view data (e.g. the "
                             "validation set) has no positive pair")
        captions = unit_captions(caption_embeddings.to(image_features.device))
        all_views, all_captions = self._gather(image_features, captions)
        if self.world_size > 1 and self.local_loss:
            row_views, row_captions, offset = image_features, captions, self.rank * captions.shape[0]
        else:
            row_views, row_captions, offset = all_views, all_captions, 0
        scale = logit_scale if self.temperature is None else 1.0 / self.temperature
        loss = xclr_loss(row_views, all_views, row_captions, all_captions, self.tau_s, scale, offset, self.graph)
        if self.temperature is not None and logit_scale is not None and logit_scale.requires_grad:
            loss = loss + 0.0 * logit_scale.sum()  # gradient exactly 0; keeps DDP's every-parameter check
        losses = {"xclr_loss": loss}
        return losses if output_dict else loss
