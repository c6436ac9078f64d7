"""A non-finite loss stops training with the step it happened at, before a checkpoint is written.

OpenCLIP 3.3.0 saves checkpoints only in ``main`` after ``train_one_epoch`` returns (main.py L503-535),
so raising inside the epoch keeps every checkpoint on disk as it was: the last one is the state before
the epoch that went wrong, and ``--resume latest`` continues from it once the cause is fixed.

What counts as fatal depends on the precision:
- fp32, bf16 (``amp_bf16``), pure fp16: the first non-finite loss. Nothing will skip that step, so the
  optimizer would write NaN into the weights.
- ``--precision amp`` (fp16 autocast with OpenCLIP's GradScaler): an overflow is expected now and then;
  the scaler skips the step (weights untouched) and halves its scale. A transient non-finite loss is
  logged (how many steps were skipped since the last report, and the first of them) and training goes
  on. The run stops when the loss stays non-finite for ``AMP_PATIENCE`` consecutive optimizer steps,
  counted across epoch boundaries (``Streak`` outlives each epoch's guard): the scaler has then halved
  its scale that many times without a single finite step, so waiting longer only shrinks it further.

Cost. Each loss call records, on the loss's device and without a synchronisation, the first bad step,
the current streak of bad steps and how many steps were bad since the last report (a handful of
element-wise kernels on 0-d tensors). The record is read only where OpenCLIP itself calls ``.item()`` on the loss to log it (every
``--log-every-n-steps`` steps and at the epoch's last step) and once more when the epoch ends, before
``main`` can save: one device-to-host read of 4 integers at points where the host already waits for
the device. In a distributed run that read is preceded by one ``all_reduce`` (MIN) of those 4 integers
across ranks, so every rank stops at the same check and none is left waiting in a collective: one
extra small collective per logging step, no per-step synchronisation. Measured on CPU gloo with 2
processes (``python -m xsample_openclip.bench --sections guard``, docs/benchmark.md): the record costs
~60 us per loss call, a check ~0.43 ms (median; ~0.32 ms of it the all_reduce), once per
``--log-every-n-steps`` steps.
"""
import logging

import torch

_NONE = 2 ** 62  # "no such step yet"
#: With GradScaler (``--precision amp``): consecutive non-finite optimizer steps that stop the run.
AMP_PATIENCE = 16

FIXES = ("lower --lr (or raise --warmup), use --precision amp_bf16 instead of amp/fp16, add "
         "--grad-clip-norm 1.0, or raise --xsample-tau-s; then continue with --resume latest")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stops before any checkpoint is written."""


class Streak:
    """The current run of non-finite optimizer steps (length, first step), kept across epochs by the
    training loop and shared with each epoch's guard; 0-d int64 tensors on the loss's device."""

    def __init__(self):
        self.length = None
        self.start = None

    def update(self, bad, step):
        if self.length is None:
            self.length = torch.zeros((), dtype=torch.long, device=bad.device)
            self.start = torch.full((), _NONE, dtype=torch.long, device=bad.device)
        self.start = torch.where(bad & (self.length == 0), step, self.start)
        self.length = torch.where(bad, self.length + 1, 0)
        return self.length, self.start


class FiniteLossGuard:
    """Wraps the loss ``train_one_epoch`` calls; records non-finite steps; raises at checks.

    Attribute access goes to the wrapped loss.
    """

    def __init__(self, loss, epoch, batches_per_epoch, accum_freq=1, log_every_n_steps=100,
                 checkpoint_path=None, distributed=False, grad_scaler=False, patience=AMP_PATIENCE, streak=None):
        object.__setattr__(self, "_loss", loss)
        self._epoch = epoch
        self._batches = max(1, batches_per_epoch)
        self._accum = max(1, accum_freq)
        self._log_every = max(1, log_every_n_steps)
        self._checkpoint_path = checkpoint_path
        self._distributed = distributed
        self._patience = patience if grad_scaler else 1
        self._grad_scaler = grad_scaler
        self._calls = 0
        # int64 on the loss's device: [first bad step, first step of a fatal streak,
        #                              -(bad steps since the last report), first bad step since then]
        self._state = None
        self._streak = streak if streak is not None else Streak()
        self._step_bad = None    # bool 0-d: any bad call in the current optimizer step
        self._first_value = None

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
        last_call_of_step = call % self._accum == self._accum - 1
        self._record(total.detach(), self._batches * self._epoch + batch, last_call_of_step)
        if last_call_of_step and (batch % self._log_every == 0 or batch + 1 == self._batches):
            self.check()
        return losses

    def _record(self, total, step, end_of_step):
        with torch.no_grad():
            total = total.float()
            device = total.device
            if self._state is None:
                self._state = torch.tensor([_NONE, _NONE, 0, _NONE], dtype=torch.long, device=device)
                self._step_bad = torch.zeros((), dtype=torch.bool, device=device)
                self._first_value = torch.zeros((), dtype=torch.float32, device=device)
            bad = ~torch.isfinite(total)
            new_first = bad & (self._state[0] == _NONE)
            self._first_value = torch.where(new_first, total, self._first_value)
            self._state[0] = torch.where(new_first, step, self._state[0])
            self._state[3] = torch.where(bad & (self._state[3] == _NONE), step, self._state[3])
            self._step_bad = self._step_bad | bad
            if not end_of_step:
                return
            length, start = self._streak.update(self._step_bad, step)
            self._state[2] -= self._step_bad.long()
            fatal = (length >= self._patience) & (self._state[1] == _NONE)
            self._state[1] = torch.where(fatal, start, self._state[1])
            self._step_bad = torch.zeros_like(self._step_bad)

    def check(self):
        """Read the record (one small all_reduce first when distributed); raise if the run must stop."""
        if self._state is None:
            if not self._distributed:
                return
            state = torch.tensor([_NONE, _NONE, 0, _NONE], dtype=torch.long, device=_collective_device())
        else:
            state = self._state.clone()
        if self._distributed:
            torch.distributed.all_reduce(state, op=torch.distributed.ReduceOp.MIN)
        first, fatal, minus_bad, first_since = state.tolist()
        if fatal != _NONE:
            self._stop(first, fatal)
        if minus_bad and self._grad_scaler:
            logging.warning(
                f"{-minus_bad} optimizer step(s) up to epoch {self._epoch} had a non-finite loss (fp16 overflow, "
                f"first at step {first_since}); GradScaler skipped them and lowered its scale. Training goes on; "
                f"it stops if {self._patience} consecutive steps are non-finite.")
            if self._state is not None:
                self._state[2] = 0
                self._state[3] = _NONE

    def _stop(self, first, fatal):
        value = "not finite"
        if self._state is not None and int(self._state[0]) == first:
            value = str(float(self._first_value))
        step = fatal if self._grad_scaler else first
        epoch, batch = divmod(step, self._batches)
        where = (f"the last checkpoint in {self._checkpoint_path} is untouched" if self._checkpoint_path
                 else "no checkpoint was written after it")
        if self._grad_scaler:
            what = (f"training loss was non-finite for {self._patience} consecutive steps from step {step} "
                    f"(epoch {epoch}, batch {batch + 1} of {self._batches}; the first non-finite value, "
                    f"{value}, at step {first}): GradScaler skipped every one of them")
        else:
            what = f"training loss was {value} at step {step} (epoch {epoch}, batch {batch + 1} of {self._batches})"
        message = f"{what}; stopping before the epoch ends, so {where}. Possible fixes: {FIXES}."
        logging.error(message)
        raise NonFiniteLossError(message)


def _collective_device():
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
