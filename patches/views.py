"""Two augmented views per training image (``--xsample-views 2``) through OpenCLIP's own loaders and loop.

Data: ``open_clip_train.data.get_data(args, preprocess_fns, epoch, tokenizer)`` is wrapped so that, with
two views, the training preprocess becomes ``views.TwoViews`` of the view transform (OpenCLIP's train
transform plus flip and blur, ``xsample_openclip.views``). OpenCLIP's CSV and webdataset pipelines
apply it per sample and stack the samples, so a training batch's images are ``[B, 2, C, H, W]``; the
validation and zero-shot preprocess (the second of ``preprocess_fns``, and ImageNet's) are untouched.

Model: ``train_one_epoch`` calls ``model(images, texts)``; ``ViewsModel`` (put around the model by
train_loop.py, training only) flattens the images to ``[2B, C, H, W]`` before calling the model (the
DDP wrapper, so gradients are synchronised as usual). The layout is **interleaved**: rows 2i and 2i + 1
are sample i's two views, which stays true when ``--accum-freq`` concatenates micro-batches and when
the loss all-gathers ranks (``xsample_openclip.losses.xclr``). Texts stay ``[B, L]``: ``CLIP.forward``
encodes the two towers independently. The checkpoint is the bare model's, unchanged.
"""
import functools

import torch

from xsample_openclip import registry
from xsample_openclip.views import VIEWS_LOSSES, two_view_transform, views_of


def wrap_get_data(stock):
    @functools.wraps(stock)
    def get_data(args, preprocess_fns, epoch=0, tokenizer=None):
        if registry.loss_run(args) is not None and views_of(args) == 2:
            if args.loss not in VIEWS_LOSSES:  # the plugins refuse this at parsing; never silently one view
                raise ValueError(f"--xsample-views 2 with --loss {args.loss}: supported by --loss "
                                 f"{' / '.join(VIEWS_LOSSES)} only")
            train, val = preprocess_fns
            preprocess_fns = (two_view_transform(train, args), val)
        return stock(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)

    return get_data


def flatten_views(images: torch.Tensor) -> torch.Tensor:
    """``[B, 2, C, H, W]`` -> ``[2B, C, H, W]``, rows 2i and 2i + 1 = sample i's views."""
    if images.dim() != 5 or images.shape[1] != 2:
        raise RuntimeError(
            f"--xsample-views 2: the training batch's images have shape {tuple(images.shape)}, not "
            "[B, 2, C, H, W]; the two-view data path is not active (the xsample_openclip hook must wrap "
            "open_clip_train.data.get_data before open_clip_train.main calls it)")
    return images.flatten(0, 1)


class ViewsModel:
    """Calls the model with the two views of each image as consecutive image rows."""

    def __init__(self, model):
        object.__setattr__(self, "_model", model)

    def __call__(self, image=None, text=None, *args, **kwargs):
        if image is not None:
            image = flatten_views(image)
        return self._model(image, text, *args, **kwargs)

    def __getattr__(self, name):
        value = getattr(self._model, name)
        if name == "module" and isinstance(value, torch.nn.Module):
            return ViewsModel(value)
        return value

    def __setattr__(self, name, value):
        setattr(self._model, name, value)


def with_views(model, args):
    """The model the training loop should call: flattening two views when the run has them."""
    return ViewsModel(model) if views_of(args) == 2 else model
