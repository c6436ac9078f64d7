"""OpenCLIP 3.0.0 through 3.2.x validate through the DDP wrapper; 3.3.0 unwraps it first.

Their ``evaluate`` (rank 0 alone) calls the model as main wrapped it, ``DistributedDataParallel``, whose
forward takes part in collectives (it broadcasts the module's buffers after a training step) that the
other ranks, already in the next epoch, answer with their own. Measured on 3.2.0 with 2 gloo processes
and ``--val-data``: ``--loss clip`` and ``--loss xsample`` alike stop in the second epoch with gloo's
"Is there a distributed collective mismatch". 3.3.0's ``evaluate`` calls ``model.module`` instead.

For a plugin loss, whose validation patches/evaluation.py runs, the model handed to these releases'
``evaluate`` calls the bare module, as 3.3.0 does; everything else it reads (``.module`` for the
zero-shot pass, ``.eval()``) is the wrapper's. ``--loss clip`` keeps the release's stock behaviour.
"""
from typing import Any


class BareForward:
    """The DDP-wrapped model, except that calling it calls the wrapped module (no collectives)."""

    def __init__(self, ddp_model):
        object.__setattr__(self, "_model", ddp_model)

    def __call__(self, *args, **kwargs):
        return self._model.module(*args, **kwargs)

    def __getattr__(self, name) -> Any:
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        setattr(self._model, name, value)


def validation_model(model, args):
    """What these releases' ``evaluate`` should be given: the model, calling its bare module when
    main wrapped it in DDP (as 3.3.0's evaluate does)."""
    if getattr(args, "distributed", False) and not getattr(args, "horovod", False) and hasattr(model, "module"):
        return BareForward(model)
    return model
