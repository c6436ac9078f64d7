"""Every change this plugin makes to OpenCLIP (3.0.0 through 3.3.x: version.py), in one place.

Wrapped, each idempotently, right after its module is imported (``apply``, called by the start-up
hook) or explicitly (``install``):
- ``open_clip_train.params.parse_args``: ``--loss`` and the losses' flags, checked (arguments.py);
- ``open_clip_train.distributed.init_distributed_device``: CPU multi-process DDP, and the loss plugin's
  start-up checks on rank 0, shared with every rank (startup_checks.py, resume.py);
- ``open_clip.create_loss`` (and ``open_clip.factory.create_loss``): built by the loss registry, for
  arguments from the patched parser only;
- ``open_clip_train.train.train_one_epoch``: token ids for plugin losses, a finiteness guard, the
  end-of-epoch hook (train_loop.py, finite.py); with ``--xsample-locked-text-cache``, the HF text tower's
  forward on the model instance (locked_text.py);
- ``open_clip_train.train.evaluate``: the plugin loss's objective on the validation data (evaluation.py);
- ``open_clip_train.data.get_csv_dataset``: with a plugin loss, CSV bytes that are not UTF-8 do not
  crash the run (csv_data.py);
- ``open_clip_train.data.get_data``: two augmented views per training image with ``--xsample-views 2``
  (views.py; the training loop then flattens them for the model, train_loop.py);
- the same names already bound in ``open_clip_train.main``, if it was imported first.
The package's tiny model configs are registered with OpenCLIP as well. What an older release lacks or
does otherwise is covered by a shim named after it (``openclip_3_0_0.py``, ``openclip_3_0_to_3_2.py``),
which version.py selects for the installed release.
"""
import functools
import importlib
import sys

from .version import unsupported_version_message

_MARK = "__xsample_patched__"


def _patch_attr(module, name, make_wrapper):
    current = getattr(module, name)
    if getattr(current, _MARK, False):
        return current
    patched = make_wrapper(current)
    setattr(patched, _MARK, True)
    setattr(module, name, patched)
    return patched


def _wrap_create_loss(stock):
    @functools.wraps(stock)
    def create_loss(args):
        from xsample_openclip import registry

        run = registry.loss_run(args)
        if run is None:  # arguments not from the patched parser: stock behaviour
            return stock(args)
        run.log_notes()
        run.loss = registry.load_plugin(args.loss).build(args)
        registry.check_built_loss(run.loss, args.loss)
        return run.loss

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


def patch_distributed(distributed):
    if unsupported_version_message() is not None:
        return
    from .startup_checks import wrap_init_distributed_device

    _patch_attr(distributed, "init_distributed_device", wrap_init_distributed_device)


def patch_train(train):
    if unsupported_version_message() is not None:
        return
    from .evaluation import wrap_evaluate
    from .train_loop import wrap_train_one_epoch

    _patch_attr(train, "train_one_epoch", wrap_train_one_epoch)
    _patch_attr(train, "evaluate", lambda stock: wrap_evaluate(stock, train))


def patch_data(data):
    if unsupported_version_message() is not None:
        return
    from .csv_data import wrap_get_csv_dataset
    from .views import wrap_get_data

    _patch_attr(data, "get_csv_dataset", wrap_get_csv_dataset)
    _patch_attr(data, "get_data", wrap_get_data)


def patch_main(main):
    """Rebind names that ``open_clip_train.main`` imported before the patches existed."""
    import open_clip
    import open_clip_train.data
    import open_clip_train.distributed
    import open_clip_train.params
    import open_clip_train.train

    main.parse_args = open_clip_train.params.parse_args
    main.create_loss = open_clip.create_loss
    main.init_distributed_device = open_clip_train.distributed.init_distributed_device
    main.train_one_epoch = open_clip_train.train.train_one_epoch
    main.evaluate = open_clip_train.train.evaluate
    main.get_data = open_clip_train.data.get_data


#: Module name -> its patch; the start-up hook watches exactly these names.
PATCHES = {
    "open_clip": patch_open_clip,
    "open_clip_train.params": patch_params,
    "open_clip_train.distributed": patch_distributed,
    "open_clip_train.train": patch_train,
    "open_clip_train.data": patch_data,
}


def apply(name, module):
    """Patch ``module`` (just imported as ``name``)."""
    PATCHES[name](module)


def install():
    """Patch OpenCLIP now (idempotent). Imports the patched modules; returns nothing."""
    for name, patch in PATCHES.items():
        patch(importlib.import_module(name))
    for name in ("open_clip_train.main", "__main__"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__spec__", None) is not None \
                and module.__spec__.name == "open_clip_train.main":
            patch_main(module)
