"""Test helpers: the tensor memory a loss call allocates, and one rank of a large world in one process.

Independent of the benchmark's own meter (``xsample_openclip.bench.measure``, which replays
``torch.profiler`` allocation events): ``peak_tensor_bytes`` watches every ATen op through a
``TorchDispatchMode`` and counts the storages of the tensors ops return, each until it is freed, so a
test that holds with both meters does not rest on one measuring method. It sees tensors only (not a
kernel's internal scratch), which is what the losses' memory claims are about.

``gather_as_rank`` / ``all_gather_as_rank`` make the collectives the losses call return what rank
``rank`` of ``world_size`` would receive: its own live tensor at its place, fixed rows elsewhere (made
before any measurement, as a real rank does not hold them before the collective).
"""
import contextlib

import torch
import torch.distributed
import torch.distributed.nn
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _StorageMeter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = {}          # storage id -> (weak reference, bytes)
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {_storage_id(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for key, (ref, nbytes) in list(self.live.items()):  # frees since the last op
            if ref.expired():
                del self.live[key]
                self.current -= nbytes
        for t in tree_leaves(out):
            # an output on an input's storage (a view, an in-place result) allocated nothing
            if isinstance(t, torch.Tensor) and _storage_id(t) not in inputs and _storage_id(t) not in self.live:
                ref = StorageWeakRef(t.untyped_storage())
                self.live[ref.cdata] = (ref, t.untyped_storage().nbytes())
                self.current += self.live[ref.cdata][1]
                self.peak = max(self.peak, self.current)
        return out


def _storage_id(tensor):
    return tensor.untyped_storage()._cdata


def peak_tensor_bytes(fn) -> int:
    """Peak bytes of tensor storage that ``fn()`` allocated and still held at once (inputs not counted)."""
    meter = _StorageMeter()
    with meter:
        fn()
    return meter.peak


def _rows(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@contextlib.contextmanager
def gather_as_rank(rank, world_size, local_batch, widths, seed=0):
    """OpenCLIP's ``gather_features`` (ClipLoss, XSampleLoss) as rank ``rank`` receives it.

    ``widths``: {"image": d, "text": d, "captions": caption width}; gathered rows are detached with
    ``local_loss`` and without ``gather_with_grad``, as OpenCLIP does.
    """
    import open_clip.loss as oc_loss

    from xsample_openclip.losses import softmax

    fixed = {role: _rows((world_size - 1) * local_batch, d, seed + i) for i, (role, d) in enumerate(widths.items())}
    cut = rank * local_batch

    def place(role, live):
        return torch.cat([fixed[role][:cut].to(live.dtype), live, fixed[role][cut:].to(live.dtype)])

    def gather(image, text, local_loss=False, gather_with_grad=False, rank=0, world_size=1, use_horovod=False):
        if image is text:
            return place("captions", image), place("captions", image)
        if local_loss and not gather_with_grad:
            image, text = image.detach(), text.detach()
        return place("image", image), place("text", text)

    saved = oc_loss.gather_features
    oc_loss.gather_features = softmax.gather_features = gather
    try:
        yield
    finally:
        oc_loss.gather_features = softmax.gather_features = saved


@contextlib.contextmanager
def all_gather_as_rank(rank, world_size, local_batch, widths, seed=0):
    """``torch.distributed.nn.all_gather`` (features, with gradient) and ``torch.distributed.all_gather``
    (caption embeddings) as rank ``rank`` receives them, for the sigmoid losses' ``gather`` schedule.

    ``widths``: {"text": d, "captions": caption width}.
    """
    fixed = {role: _rows((world_size - 1) * local_batch, d, seed + i).split(local_batch)
             for i, (role, d) in enumerate(widths.items())}

    def received(role, live):
        rest = iter(fixed[role])
        return [live if i == rank else next(rest).to(live.dtype) for i in range(world_size)]

    def nn_all_gather(tensor, group=None):
        return tuple(t if t is tensor else t.clone() for t in received("text", tensor))

    def all_gather(tensor_list, tensor, group=None, async_op=False):
        for out, t in zip(tensor_list, received("captions", tensor)):
            out.copy_(t)

    saved = torch.distributed.nn.all_gather, torch.distributed.all_gather
    torch.distributed.nn.all_gather, torch.distributed.all_gather = nn_all_gather, all_gather
    try:
        yield
    finally:
        torch.distributed.nn.all_gather, torch.distributed.all_gather = saved
