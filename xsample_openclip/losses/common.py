"""What both X-Sample losses share: caption embeddings from the batch's token ids, and the loop contract.

``CaptionTargetLoss`` implements ``registry.PluginLoss``: it asks the loop for the batch's token ids
(the loader's CPU tensor, under ``registry.BATCH_TOKENS``), turns them into unit caption embeddings on
the host (table) or on the encoder's device (online) and moves them to the features' device without a
host-device synchronisation (``to_device``); at the end of an epoch it logs the odd-caption counts summed
over ranks; ``single_process()`` gives the same loss for one process (the training objective on validation
data). The embedder and its counts are handed in (``targets``: ``caption_embedder`` and its ``stats``,
which count, describe and renew themselves), so this floor of the losses imports none of the layers that
read files or run the caption encoder.
"""
import copy
import logging
from typing import Optional

import torch
import torch.nn as nn

from .graph import check_topk


def to_device(embeddings: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move host embeddings to the features' device without making the host wait (pinned, non-blocking)."""
    if embeddings.device == device:
        return embeddings
    if embeddings.device.type == "cpu" and device.type == "cuda":
        embeddings = embeddings.pin_memory()
    return embeddings.to(device, non_blocking=True)


class CaptionTargetLoss(nn.Module):
    needs_batch_tokens = True

    def __init__(self, caption_embedder=None, tau_s: Optional[float] = 0.2, rank: int = 0, world_size: int = 1,
                 topk: Optional[int] = None, uses_tau_s: bool = True):
        """``uses_tau_s``: False for targets without a caption temperature (xclr's instance graph), whose
        ``tau_s`` may then be None."""
        super().__init__()
        if uses_tau_s and (tau_s is None or not tau_s > 0):
            raise ValueError(f"tau_s must be > 0, got {tau_s}")
        if topk is not None:
            check_topk(topk)
        self.caption_embedder = caption_embedder
        self.tau_s = tau_s
        self.rank = rank
        self.world_size = world_size
        self.topk = topk  # --xsample-graph-topk (None: every caption of the batch)

    def caption_embeddings_for(self, batch_tokens: Optional[torch.Tensor], device: torch.device) -> torch.Tensor:
        if batch_tokens is None:
            raise RuntimeError(
                f"{type(self).__name__} got no caption token ids: the xsample_openclip training hook is not "
                "active. Launch with `python -m xsample_openclip.launch ...` or install the package "
                "(pip install xsample-openclip) so `python -m open_clip_train.main` loads its hook.")
        if self.caption_embedder is None:
            raise RuntimeError(f"{type(self).__name__} needs a caption_embedder to turn token ids into targets")
        return to_device(self.caption_embedder(batch_tokens), device)

    # --- registry.PluginLoss -------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, args) -> None:
        """Nothing to set per epoch by default (``XSampleLoss`` sets its hard-target weight)."""

    def end_epoch(self, epoch: int, args) -> None:
        """Log (rank 0) this epoch's odd-caption counts, summed over ranks, and start counting afresh."""
        stats = getattr(self.caption_embedder, "stats", None)
        if stats is None:
            return
        counts = stats.take()
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            fields = list(counts)  # the same order on every rank (the counts' fixed fields)
            device = torch.device(args.device) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
            total = torch.tensor([counts[f] for f in fields], dtype=torch.long, device=device)
            torch.distributed.all_reduce(total)
            counts = dict(zip(fields, total.tolist()))
        if self.rank == 0:
            decoder = getattr(self.caption_embedder, "decoder", None)
            logging.info(f"X-Sample captions, epoch {epoch}: " + stats.describe(
                counts, getattr(decoder, "context_length", 0), getattr(self.caption_embedder, "text_checked", True)))

    def single_process(self) -> "CaptionTargetLoss":
        """This loss for one process (no gather), sharing the embedder's cache but not its epoch counts."""
        twin = copy.copy(self)
        twin.rank, twin.world_size = 0, 1
        if self.caption_embedder is not None and hasattr(self.caption_embedder, "stats"):
            twin.caption_embedder = copy.copy(self.caption_embedder)
            twin.caption_embedder.stats = type(self.caption_embedder.stats)()  # fresh counts of the same kind
        return twin
