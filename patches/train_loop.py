"""Around ``train_one_epoch``: the batch's token ids for plugin losses, a finiteness guard, the epoch hook.

Token ids. ``train_one_epoch`` moves each batch to the device and calls ``model(images, texts)``; the
model's output dict goes to the loss (``loss(**model_out)``), and in the ``--accum-freq`` path every
output key is concatenated across micro-batches. So the loop is given (1) a view of the data loader
that notes each batch's token tensor as the loader made it, on the host, and (2) a thin proxy around
the model that adds that host tensor to the output dict under ``registry.BATCH_TOKENS``. The proxy
matches a device tensor to its host tensor by identity: the micro-batches the accumulation path
forwards again are the very tensor objects it forwarded first. No device tensor is ever read back, and
no parameter or buffer is added: the checkpoint, ``evaluate()`` and zero-shot see the bare model.

With a plugin loss (``--loss`` other than ``clip``) the loss is also wrapped in ``FiniteLossGuard``
(finite.py), and ``PluginLoss.begin_epoch`` / ``end_epoch`` are called before the epoch's first step and
when its steps are done. With ``--xsample-locked-text-cache`` the text tower's cached forward is installed
before the first epoch (locked_text.py) and its hits are logged after each.
"""
import dataclasses
import functools
import inspect
import logging
from collections import OrderedDict

import torch

from xsample_openclip import locked_text, registry

from .finite import FiniteLossGuard, Streak
from .locked_text import install as install_text_cache
from .views import with_views


class TokenTap:
    """Pairs each batch's token tensor as the loader made it with the tensor the model is called with."""

    #: Texts remembered at least, whatever ``accum_freq``.
    MIN_KEEP = 64

    def __init__(self, accum_freq: int = 1):
        self._pending = None
        self._known = OrderedDict()  # id(text the model saw) -> (that tensor, the loader's host tensor)
        # With --accum-freq k, train_one_epoch forwards k micro-batches without gradient (k new texts
        # noted here), then forwards the same k text tensors again with gradient: all k must still be
        # known then, or the loss gets device token ids (a crash on CUDA). 2k keeps a whole step even
        # if the loop forwards a second text per micro-batch; older entries are never looked up again.
        self._keep = max(self.MIN_KEEP, 2 * max(1, int(accum_freq)))

    def loader_batch(self, texts) -> None:
        self._pending = texts

    def host_tokens(self, text):
        entry = self._known.get(id(text))
        if entry is not None and entry[0] is text:
            return entry[1]
        if self._pending is None:
            return None
        host, self._pending = self._pending, None
        self._known[id(text)] = (text, host)
        while len(self._known) > self._keep:
            self._known.popitem(last=False)
        return host


class RecordingLoader:
    """Iterates the wrapped loader unchanged, telling the tap each batch's host token tensor."""

    def __init__(self, loader, tap: TokenTap):
        self._loader = loader
        self._tap = tap

    def __iter__(self):
        for batch in self._loader:
            self._tap.loader_batch(batch[1])
            yield batch

    def __len__(self):
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class TokenModel:
    """Calls the model and adds the batch's host token ids to its output dict."""

    def __init__(self, model, tap: TokenTap):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_tap", tap)

    def __call__(self, image=None, text=None, *args, **kwargs):
        out = self._model(image, text, *args, **kwargs)
        if text is not None and isinstance(out, dict):
            host = self._tap.host_tokens(text)
            out[registry.BATCH_TOKENS] = host if host is not None else text
        return out

    def __getattr__(self, name):
        value = getattr(self._model, name)
        if name == "module" and isinstance(value, torch.nn.Module):  # evaluate() unwraps DDP itself
            return TokenModel(value, self._tap)
        return value

    def __setattr__(self, name, value):
        setattr(self._model, name, value)


def with_token_tap(model, data, split, accum_freq: int = 1):
    """(model proxy, data dict whose ``split`` loader reports its host token tensors)."""
    tap = TokenTap(accum_freq)
    info = data[split]
    data = dict(data)
    data[split] = dataclasses.replace(info, dataloader=RecordingLoader(info.dataloader, tap))
    return TokenModel(model, tap), data


def _distributed(args) -> bool:
    return bool(getattr(args, "distributed", False)) and torch.distributed.is_available() \
        and torch.distributed.is_initialized()


def _locked_text_cache(model, args):
    """The run's locked-text cache (``--xsample-locked-text-cache``), installed before its first step."""
    run = registry.loss_run(args)
    if run is None or not locked_text.capacity(args):
        return None
    if "locked_text_cache" not in run.loop_state:
        run.loop_state["locked_text_cache"] = install_text_cache(model, locked_text.capacity(args))
    return run.loop_state["locked_text_cache"]


def wrap_train_one_epoch(stock):
    signature = inspect.signature(stock)

    @functools.wraps(stock)
    def train_one_epoch(*call_args, **call_kwargs):
        bound = signature.bind(*call_args, **call_kwargs)
        model, data, loss, epoch, args = (bound.arguments[k] for k in ("model", "data", "loss", "epoch", "args"))
        plugin_loss = loss if isinstance(loss, registry.PluginLoss) else None
        text_cache = _locked_text_cache(model, args)
        if registry.loss_run(args) is not None:  # --xsample-views 2: [B, 2, C, H, W] -> [2B, C, H, W]
            model = bound.arguments["model"] = with_views(model, args)
        if plugin_loss is not None and plugin_loss.needs_batch_tokens:
            bound.arguments["model"], bound.arguments["data"] = with_token_tap(
                model, data, "train", getattr(args, "accum_freq", 1))
        guard = None
        run = registry.loss_run(args)
        if run is not None and args.loss != "clip":
            accum = max(1, getattr(args, "accum_freq", 1))
            guard = FiniteLossGuard(
                loss, epoch, data["train"].dataloader.num_batches // accum, accum,
                getattr(args, "log_every_n_steps", 100), getattr(args, "checkpoint_path", None),
                distributed=_distributed(args), grad_scaler=bound.arguments.get("scaler") is not None,
                streak=run.loop_state.setdefault("non_finite_streak", Streak()))
            bound.arguments["loss"] = guard
        if plugin_loss is not None:
            plugin_loss.begin_epoch(epoch, args)
        result = stock(*bound.args, **bound.kwargs)
        if guard is not None:
            guard.check()  # before main can save this epoch's checkpoint
        if plugin_loss is not None:
            plugin_loss.end_epoch(epoch, args)
        if text_cache is not None:
            logging.info(text_cache.epoch_summary())
        return result

    return train_one_epoch
