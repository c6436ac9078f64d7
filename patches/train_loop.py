"""Around ``train_one_epoch``: token ids for the loss, a finiteness guard, and the odd-caption summary.

Token ids: ``train_one_epoch`` calls ``model(images, texts)`` and passes the model's output dict to the
loss (``loss(**model_out)``); in the ``--accum-freq`` path it concatenates every output key across
micro-batches. So a thin proxy around the model that adds the texts to that dict delivers them to
the loss, aligned with the features in every mode. No parameter or buffer is added: the checkpoint,
``evaluate()`` and zero-shot see the bare model.

With a plugin loss (``--loss`` other than ``clip``) the loss is also wrapped in ``FiniteLossGuard``
(finite.py: a NaN/inf loss stops the run, naming the step, before ``main`` saves), and the caption
embedder's odd-caption counts are logged (summed over ranks) when the epoch ends.
"""
import functools
import inspect
import logging

import torch

from xsample_openclip.loss import TOKENS_KEY

from .finite import FiniteLossGuard


class TokenTap:
    """Calls the model and adds the batch's token ids to its output dict under ``xsample_tokens``."""

    def __init__(self, model):
        object.__setattr__(self, "_model", model)

    def __call__(self, image=None, text=None, *args, **kwargs):
        out = self._model(image, text, *args, **kwargs)
        if text is not None and isinstance(out, dict):
            out[TOKENS_KEY] = text
        return out

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        setattr(self._model, name, value)


def _distributed(args) -> bool:
    return bool(getattr(args, "distributed", False)) and torch.distributed.is_available() \
        and torch.distributed.is_initialized()


def log_caption_stats(loss, epoch, args) -> None:
    """Log (on the master rank) the caption embedder's odd-caption counts for this epoch, then reset."""
    embedder = getattr(loss, "caption_embedder", None)
    stats = getattr(embedder, "stats", None)
    if stats is None:
        return
    from xsample_openclip.captions import CaptionStats, describe_caption_stats

    counts = stats.take()
    if _distributed(args):
        device = torch.device(args.device) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        total = torch.tensor([counts[f] for f in CaptionStats.FIELDS], dtype=torch.long, device=device)
        torch.distributed.all_reduce(total)
        counts = dict(zip(CaptionStats.FIELDS, total.tolist()))
    if getattr(args, "rank", 0) == 0:
        decoder = getattr(embedder, "decoder", None)
        logging.info(f"X-Sample captions, epoch {epoch}: " + describe_caption_stats(
            counts, getattr(decoder, "context_length", 0), getattr(embedder, "text_checked", True)))


def wrap_train_one_epoch(stock):
    signature = inspect.signature(stock)

    @functools.wraps(stock)
    def train_one_epoch(*call_args, **call_kwargs):
        bound = signature.bind(*call_args, **call_kwargs)
        model, data, loss, epoch, args = (bound.arguments[k] for k in ("model", "data", "loss", "epoch", "args"))
        if getattr(loss, "needs_tokens", False):
            bound.arguments["model"] = TokenTap(model)
        guard = None
        if getattr(args, "loss", "clip") != "clip":
            accum = max(1, getattr(args, "accum_freq", 1))
            guard = FiniteLossGuard(
                loss, epoch, data["train"].dataloader.num_batches // accum, accum,
                getattr(args, "log_every_n_steps", 100), getattr(args, "checkpoint_path", None),
                distributed=_distributed(args))
            bound.arguments["loss"] = guard
            stats = getattr(getattr(loss, "caption_embedder", None), "stats", None)
            if stats is not None:
                stats.calls_per_batch = accum  # the accum_freq path calls the loss k times per batch
        result = stock(*bound.args, **bound.kwargs)
        if guard is not None:
            guard.check()  # before main can save this epoch's checkpoint
            log_caption_stats(loss, epoch, args)
        return result

    return train_one_epoch
