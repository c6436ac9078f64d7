"""Hands each batch's token ids to a loss that asks for them, without touching the data loader.

``train_one_epoch`` calls ``model(images, texts)`` and passes the model's output dict to the loss
(``loss(**model_out)``); in the ``--accum-freq`` path it concatenates every output key across
micro-batches. So a thin proxy around the model that adds the texts to that dict delivers them to
the loss, aligned with the features in every mode. No parameter or buffer is added: the checkpoint,
``evaluate()`` and zero-shot see the bare model.
"""
import functools

from xsample_openclip.loss import TOKENS_KEY


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


def wrap_train_one_epoch(stock):
    @functools.wraps(stock)
    def train_one_epoch(model, data, loss, *args, **kwargs):
        if getattr(loss, "needs_tokens", False):
            model = TokenTap(model)
        return stock(model, data, loss, *args, **kwargs)

    return train_one_epoch
