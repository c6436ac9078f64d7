"""A non-finite loss stops training with the step it happened at, before a checkpoint is written.

OpenCLIP 3.3.0 saves checkpoints only in ``main`` after ``train_one_epoch`` returns (main.py L503-535),
so raising inside the epoch keeps every checkpoint on disk as it was: the last one is the state before
the epoch that went wrong, and ``--resume latest`` continues from it once the cause is fixed.

Cost. Testing ``isfinite(loss).item()`` every step would make the host wait for the device at every
step. Instead each loss call records, on the loss's device and without a sync, the first step whose
total loss was not finite (a handful of element-wise kernels on 0-d tensors). That record is read
(one ``.item()``) only where OpenCLIP itself calls ``.item()`` on the loss to log it (every
``--log-every-n-steps`` steps and at the last step of the epoch) and once more when the epoch ends,
before ``main`` can save. So no sync is added to steps that had none; the read at a logging step only
moves OpenCLIP's own sync a few kernels earlier. Under ``torch.distributed`` the record is reduced
(MIN) across ranks at those same points, so every rank stops together and no rank hangs in a
collective. Between a non-finite step and the next check the optimizer may take up to
``--log-every-n-steps`` bad steps; they only touch weights in memory, which are thrown away.
"""
import logging

import torch

_NONE = 2 ** 62  # "no non-finite step yet"

FIXES = ("lower --lr (or raise --warmup), use --precision amp_bf16 instead of amp/fp16, add "
         "--grad-clip-norm 1.0, or raise --xsample-tau-s; then continue with --resume latest")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stops before any checkpoint is written."""


class FiniteLossGuard:
    """Wraps the loss ``train_one_epoch`` calls; records the first non-finite step; raises at checks.

    Attribute access (``needs_tokens``, ``caption_embedder``, ...) goes to the wrapped loss.
    """

    def __init__(self, loss, epoch, batches_per_epoch, accum_freq=1, log_every_n_steps=100,
                 checkpoint_path=None, distributed=False):
        object.__setattr__(self, "_loss", loss)
        self._epoch = epoch
        self._batches = max(1, batches_per_epoch)
        self._accum = max(1, accum_freq)
        self._log_every = max(1, log_every_n_steps)
        self._checkpoint_path = checkpoint_path
        self._distributed = distributed
        self._calls = 0
        self._first_step = None   # 0-d int64 on the loss's device
        self._first_value = None  # 0-d float32: the loss value at that step

    def __getattr__(self, name):
        return getattr(self._loss, name)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._loss, name, value)

    def __call__(self, *args, **kwargs):
        losses = self._loss(*args, **kwargs)
        call = self._calls
        self._calls += 1
        batch = call // self._accum
        total = sum(losses.values()) if isinstance(losses, dict) else losses
        self._record(total.detach(), self._batches * self._epoch + batch)
        last_call_of_step = call % self._accum == self._accum - 1
        if last_call_of_step and (batch % self._log_every == 0 or batch + 1 == self._batches):
            self.check()
        return losses

    def _record(self, total, step):
        with torch.no_grad():
            total = total.float()
            if self._first_step is None:
                self._first_step = torch.full((), _NONE, dtype=torch.long, device=total.device)
                self._first_value = torch.zeros((), dtype=torch.float32, device=total.device)
            new = ~torch.isfinite(total) & (self._first_step == _NONE)
            self._first_step = torch.where(new, step, self._first_step)
            self._first_value = torch.where(new, total, self._first_value)

    def check(self):
        """Synchronise once; raise ``NonFiniteLossError`` if any rank saw a non-finite loss."""
        if self._first_step is None:
            if not self._distributed:
                return
            first = torch.full((), _NONE, dtype=torch.long, device=_collective_device())
        else:
            first = self._first_step.clone()
        if self._distributed:
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        step = int(first.item())
        if step == _NONE:
            return
        value = "not finite"
        if self._first_step is not None and int(self._first_step.item()) == step:
            value = str(float(self._first_value.item()))
        epoch, batch = divmod(step, self._batches)
        where = (f"the last checkpoint in {self._checkpoint_path} is untouched" if self._checkpoint_path
                 else "no checkpoint was written after it")
        message = (f"training loss was {value} at step {step} (epoch {epoch}, batch {batch + 1} of "
                   f"{self._batches}); stopping before the epoch ends, so {where}. Possible fixes: {FIXES}.")
        logging.error(message)
        raise NonFiniteLossError(message)


def _collective_device():
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
