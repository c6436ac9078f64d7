"""Around ``evaluate``: the training objective of a plugin loss on the validation data, next to CLIP's.

OpenCLIP's ``evaluate()`` (train.py L251-360, rank 0 only) reports ``clip_val_loss``: the hard-label CLIP
cross-entropy, whatever loss trained the model. For a ``registry.PluginLoss`` the same pass over
``--val-data`` also computes that loss's own objective, with ``single_process()`` (the validation pass
runs on rank 0 alone, so it must not gather across ranks), batch by batch as OpenCLIP computes its
own, sample-weighted; it is reported as ``<loss>_val_loss`` (e.g. ``xsample_val_loss``) in the same
``Eval Epoch`` log line, ``results.jsonl``, tensorboard and wandb. It is added through
``get_clip_metrics``, the function ``evaluate()`` calls once with the whole pass's features, so nothing
else in ``evaluate()`` changes. One case is expected and skipped with one warning: validation captions
missing from a ``--xsample-embeddings`` table built over the training data only (``MissingCaptionsError``,
raised by the table lookup); the metric is then left out of that evaluation (not reported over the
batches before the first missing caption, which would silently be another subset of the data). Any
other error in the loss stops the run, as an error in OpenCLIP's own evaluation does: a bug must not
turn into a missing metric.
"""
import functools
import logging


from xsample_openclip import registry
from xsample_openclip.targets.table import MissingCaptionsError

from .train_loop import with_token_tap
from .version import release_validation_model


class ValidationObjective:
    """Accumulates the plugin loss over the validation batches the model proxy sees."""

    def __init__(self, loss, name):
        self.loss = loss
        self.name = name
        self.total = 0.0
        self.samples = 0
        self.failed = None

    def observe(self, out):
        if self.failed is not None or not isinstance(out, dict) \
                or out.get("image_features") is None or out.get("text_features") is None:
            return  # zero-shot calls encode images alone
        inputs = {k: v for k, v in out.items() if k in ("image_features", "text_features", "logit_scale",
                                                         "logit_bias", registry.BATCH_TOKENS)}
        try:
            value = self.loss(**inputs)
        except MissingCaptionsError as err:  # the one expected case; anything else stops the run
            self.failed = str(err)
            return
        n = out["image_features"].shape[0]
        self.total += float(value) * n
        self.samples += n


class ObservedModel:
    """Forwards calls to the tapped model and hands every output to the objective."""

    def __init__(self, model, objective):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_objective", objective)

    def __call__(self, *args, **kwargs):
        out = self._model(*args, **kwargs)
        self._objective.observe(out)
        return out

    def __getattr__(self, name):
        value = getattr(self._model, name)
        if name == "module":
            return ObservedModel(value, self._objective)
        return value

    def __setattr__(self, name, value):
        setattr(self._model, name, value)


def wrap_evaluate(stock, module):
    @functools.wraps(stock)
    def evaluate(model, data, epoch, args, tb_writer=None, tokenizer=None):
        run = registry.loss_run(args)
        loss = run.loss if run is not None else None
        if not isinstance(loss, registry.PluginLoss) or "val" not in data or getattr(args, "rank", 0) != 0:
            return stock(model, data, epoch, args, tb_writer=tb_writer, tokenizer=tokenizer)
        objective = ValidationObjective(loss.single_process(), f"{args.loss.replace('-', '_')}_val_loss")
        model = release_validation_model(model, args)  # 3.0.0-3.2.x: no DDP forward on rank 0 alone
        if loss.needs_batch_tokens:
            model, data = with_token_tap(model, data, "val")
        model = ObservedModel(model, objective)
        stock_metrics = module.get_clip_metrics

        def get_clip_metrics(*a, **kw):
            metrics = stock_metrics(*a, **kw)
            if objective.failed:
                logging.warning(f"{objective.name} not computed on the validation data (left out of this "
                                f"evaluation): {objective.failed}")
            elif objective.samples:
                metrics[objective.name] = objective.total / objective.samples
            return metrics

        module.get_clip_metrics = get_clip_metrics
        try:
            return stock(model, data, epoch, args, tb_writer=tb_writer, tokenizer=tokenizer)
        finally:
            module.get_clip_metrics = stock_metrics

    return evaluate
