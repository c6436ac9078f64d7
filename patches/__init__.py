"""Every change this plugin makes to OpenCLIP 3.3.0, in one place.

Five names are wrapped, each idempotently:
- ``open_clip_train.params.parse_args``: ``--loss`` and the losses' flags, checked, and ``--resume``
  refused if it would change the run's loss settings (arguments.py, resume.py);
- ``open_clip.create_loss`` (and ``open_clip.factory.create_loss``): built by the loss registry;
- ``open_clip_train.train.train_one_epoch``: token ids handed to losses that need them; with a plugin
  loss, a non-finite loss stops the run naming the step, and odd captions are counted in the log
  (train_loop.py, finite.py);
- ``open_clip_train.data.get_csv_dataset``: with a plugin loss, CSV bytes that are not UTF-8 do not
  crash the run (csv_data.py);
- the same names already bound in ``open_clip_train.main``, if it was imported first.
The package's tiny model configs are registered with OpenCLIP as well.

``register_import_hooks()`` applies each patch the moment its module is imported (the start-up hook
uses it); ``install()`` applies them to modules that are already imported, or imports them.
"""
import functools
import importlib
import sys

from .version import unsupported_version_message

_MARK = "__xsample_patched__"
_STOCK = {}


def stock_create_loss():
    """OpenCLIP's own ``create_loss``, whatever has been patched since."""
    if "create_loss" not in _STOCK:
        from open_clip import factory

        return factory.create_loss
    return _STOCK["create_loss"]


def _mark(fn):
    setattr(fn, _MARK, True)
    return fn


def _patch_attr(module, name, make_wrapper):
    current = getattr(module, name)
    if getattr(current, _MARK, False):
        return current
    _STOCK.setdefault(name, current)
    patched = _mark(make_wrapper(_STOCK[name]))
    setattr(module, name, patched)
    return patched


def _wrap_create_loss(stock):
    @functools.wraps(stock)
    def create_loss(args):
        if not hasattr(args, "loss"):  # args not from the patched parser: stock behaviour
            return stock(args)
        from xsample_openclip import registry

        from .resume import log_allowed_changes

        log_allowed_changes()
        return registry.build_loss(args)

    return create_loss


def patch_open_clip(open_clip):
    if unsupported_version_message() is not None:
        return  # refused loudly in parse_args when --loss/--xsample-* is used
    from open_clip import factory
    from xsample_openclip import model_configs

    model_configs.register()
    open_clip.create_loss = _patch_attr(factory, "create_loss", _wrap_create_loss)


def patch_params(params):
    from .arguments import wrap_parse_args

    _patch_attr(params, "parse_args", wrap_parse_args)


def patch_train(train):
    if unsupported_version_message() is not None:
        return
    from .train_loop import wrap_train_one_epoch

    _patch_attr(train, "train_one_epoch", wrap_train_one_epoch)


def patch_data(data):
    if unsupported_version_message() is not None:
        return
    from .csv_data import wrap_get_csv_dataset

    _patch_attr(data, "get_csv_dataset", wrap_get_csv_dataset)


def patch_main(main):
    """Rebind names that ``open_clip_train.main`` imported before the patches existed."""
    import open_clip
    import open_clip_train.params
    import open_clip_train.train

    main.parse_args = open_clip_train.params.parse_args
    main.create_loss = open_clip.create_loss
    main.train_one_epoch = open_clip_train.train.train_one_epoch


_PATCHES = (
    ("open_clip", patch_open_clip),
    ("open_clip_train.params", patch_params),
    ("open_clip_train.train", patch_train),
    ("open_clip_train.data", patch_data),
)


def install():
    """Patch OpenCLIP now (idempotent). Imports the patched modules; returns nothing."""
    for name, patch in _PATCHES:
        patch(importlib.import_module(name))
    for name in ("open_clip_train.main", "__main__"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__spec__", None) is not None \
                and module.__spec__.name == "open_clip_train.main":
            patch_main(module)


def register_import_hooks():
    """Patch each OpenCLIP module right after it is first imported (or now, if it already is)."""
    import wrapt

    for name, patch in _PATCHES:
        wrapt.register_post_import_hook(patch, name)
