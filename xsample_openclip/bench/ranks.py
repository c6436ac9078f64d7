"""One rank of a large world, simulated in one process: the collectives return what that rank would receive.

Per-rank memory at world sizes no test machine has is measured by feeding the losses the gathered
tensors a rank would hold: this rank's live features (with the gradient rules of the real collective)
between fixed random rows standing for the other ranks. The fixed rows are made before any measurement
starts (the real rank does not hold them before the collective either); each collective's output is a
new tensor, as the real one allocates it.

- ``simulated_rank``: OpenCLIP's ``gather_features``, which ``ClipLoss`` and ``XSampleLoss`` call (with
  ``--local-loss`` and without ``--gather-with-grad`` every gathered row is detached, as in OpenCLIP).
- ``simulated_all_gather``: ``torch.distributed.nn.all_gather`` (text features, with gradient) and
  ``torch.distributed.all_gather`` (caption embeddings, no gradient), which ``SigLipLoss`` and
  ``XSampleSigLipLoss`` call with ``dist_impl="gather"``.
"""
import contextlib
from typing import Dict

import torch
import torch.distributed
import torch.distributed.nn

from .common import unit_rows


class _OtherRanks:
    """Fixed unit rows of every other rank, one block per (role, width), made up front."""

    def __init__(self, rank: int, world_size: int, local_batch: int, device, widths: Dict[str, int], seed: int):
        g = torch.Generator().manual_seed(seed)
        self.rank, self.local_batch = rank, local_batch
        self.rows = {role: unit_rows((world_size - 1) * local_batch, width, device, g)
                     for role, width in widths.items()}

    def around(self, role: str, live: torch.Tensor) -> torch.Tensor:
        """The gathered [world * n, d] tensor: this rank's live rows at its place, a new allocation."""
        rest = self.rows[role].to(live.dtype)
        cut = self.rank * self.local_batch
        return torch.cat([rest[:cut], live, rest[cut:]])

    def pieces(self, role: str, live: torch.Tensor, copies: bool = True):
        """The per-rank list an all_gather returns: the live tensor at this rank, new copies (or, with
        ``copies=False``, views of the fixed rows) elsewhere."""
        rest = self.rows[role].to(live.dtype).split(self.local_batch)
        pieces = [live if i == self.rank else rest[i - (i > self.rank)] for i in range(len(rest) + 1)]
        return [p if p is live or not copies else p.clone() for p in pieces]


@contextlib.contextmanager
def simulated_rank(rank: int, world_size: int, local_batch: int, device, widths: Dict[str, int], seed: int = 0):
    """Within the block, ``gather_features`` returns what ``rank`` of ``world_size`` receives.

    ``widths``: {"image": d, "text": d, "captions": caption width}.
    """
    import open_clip.loss as oc_loss

    from ..losses import softmax as xs_softmax

    others = _OtherRanks(rank, world_size, local_batch, device, widths, seed)

    def fake_gather(image_features, text_features, local_loss=False, gather_with_grad=False, rank=0,
                    world_size=1, use_horovod=False):
        if image_features is text_features:  # XSampleLoss gathers its caption embeddings this way
            captions = others.around("captions", image_features)
            return captions, captions
        detach = local_loss and not gather_with_grad
        image, text = (image_features.detach(), text_features.detach()) if detach else (image_features, text_features)
        return others.around("image", image), others.around("text", text)

    stock = oc_loss.gather_features
    oc_loss.gather_features = xs_softmax.gather_features = fake_gather
    try:
        yield
    finally:
        oc_loss.gather_features = xs_softmax.gather_features = stock


@contextlib.contextmanager
def simulated_all_gather(rank: int, world_size: int, local_batch: int, device, widths: Dict[str, int],
                         seed: int = 0):
    """Within the block, the two all_gathers return what ``rank`` of ``world_size`` receives.

    ``widths``: {"text": d, "captions": caption width}.
    """
    others = _OtherRanks(rank, world_size, local_batch, device, widths, seed)

    def fake_autograd_all_gather(tensor, group=None):
        return tuple(others.pieces("text", tensor))

    def fake_all_gather(tensor_list, tensor, group=None, async_op=False):
        for out, piece in zip(tensor_list, others.pieces("captions", tensor, copies=False)):
            out.copy_(piece)

    stock = torch.distributed.nn.all_gather, torch.distributed.all_gather
    torch.distributed.nn.all_gather, torch.distributed.all_gather = fake_autograd_all_gather, fake_all_gather
    try:
        yield
    finally:
        torch.distributed.nn.all_gather, torch.distributed.all_gather = stock
