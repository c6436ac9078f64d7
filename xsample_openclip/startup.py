"""Run at interpreter start-up by ``xsample_openclip_hook.pth`` (installed into site-packages).

Every Python process of the environment runs this (pip, pytest, data-loader workers), so it imports
nothing but this module and the stdlib modules Python has already loaded at start-up: it puts one
small finder first on ``sys.meta_path`` that recognises the few OpenCLIP modules the plugin patches
(``patches.PATCHES``). When one of them is imported, the finder lets the normal finders locate it,
wraps its loader, and once the module has executed applies the patch. A process that never imports
OpenCLIP pays for a set lookup per import and nothing else. ``XSAMPLE_OPENCLIP_DISABLE=1`` turns it off;
then a process that asks ``open_clip_train.main`` for a plugin loss (any ``--loss`` but ``clip``: stock
OpenCLIP has no ``--loss``) is stopped here, because stock OpenCLIP would read ``--loss xsample`` as
``--loss-dist-impl xsample`` and silently train plain CLIP: the message names the hook-free launchers,
the console script ``xsample-openclip-train`` and ``python -m xsample_openclip.launch``.

The ``.pth`` line imports this module only if an import finder finds the package (setup.py), so a
moved or deleted editable checkout leaves Python's start-up silent.
"""
import os
import sys

#: Module names whose import triggers a patch (kept in step with ``patches.PATCHES``; a test checks).
WATCHED = frozenset({"open_clip", "open_clip_train.params", "open_clip_train.distributed",
                     "open_clip_train.train", "open_clip_train.data"})


class _PatchingLoader:
    """Delegates to the real loader; applies the module's patch after it has executed."""

    def __init__(self, loader, name):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        from xsample_openclip.patches import apply

        apply(self._name, module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class PatchOnImport:
    """A ``sys.meta_path`` finder that only ever answers for the watched OpenCLIP modules."""

    def find_spec(self, name, path=None, target=None):
        if name not in WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader, name)
        return spec


def install_hook() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent); patch modules already imported."""
    if any(isinstance(f, PatchOnImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, PatchOnImport())
    already = [name for name in WATCHED if name in sys.modules]
    if already:
        from xsample_openclip.patches import apply

        for name in already:
            apply(name, sys.modules[name])


#: How a command line names OpenCLIP's trainer: ``-m open_clip_train.main`` or the path of its main.py.
TRAINER_MODULE = "open_clip_train.main"
TRAINER_SCRIPT = os.path.join("open_clip_train", "main.py")
LAUNCHER = "xsample-openclip-train"
LAUNCHER_MODULE = "python -m xsample_openclip.launch"


def _trainer_args(argv):
    """The arguments after OpenCLIP's trainer in ``argv`` (also under torchrun), or None if it is not run."""
    for i, token in enumerate(argv):
        named = ((token == TRAINER_MODULE and i > 0 and argv[i - 1] == "-m") or token == "-m" + TRAINER_MODULE
                 or token.endswith(TRAINER_SCRIPT))
        if named:
            return argv[i + 1:]
    return None


def plugin_loss_asked(argv):
    """The ``--loss`` value if ``argv`` runs open_clip_train.main with a plugin loss, else None. Every value
    but ``clip`` is one: stock OpenCLIP has no ``--loss`` and reads any value as ``--loss-dist-impl``."""
    args = _trainer_args(argv)
    if args is None:
        return None
    for i, token in enumerate(args):
        value = args[i + 1] if token == "--loss" and i + 1 < len(args) else (
            token[len("--loss="):] if token.startswith("--loss=") else None)
        if value is not None and value != "clip":
            return value
    return None


def refusal(loss):
    return (f"xsample-openclip: XSAMPLE_OPENCLIP_DISABLE=1 turns the start-up hook off, so stock OpenCLIP would "
            f"read '--loss {loss}' as '--loss-dist-impl {loss}' and silently train plain CLIP. Run the same "
            f"command as '{LAUNCHER} <flags>' or '{LAUNCHER_MODULE} <flags>' (both patch OpenCLIP themselves), or "
            f"unset XSAMPLE_OPENCLIP_DISABLE.\n")


def _disabled() -> bool:
    return os.environ.get("XSAMPLE_OPENCLIP_DISABLE", "") in ("1", "true", "yes")


if not _disabled():
    install_hook()
else:
    _asked = plugin_loss_asked(list(getattr(sys, "orig_argv", sys.argv)))
    if _asked is not None:  # stop before stock OpenCLIP trains the wrong loss (SystemExit here is fatal)
        sys.stderr.write(refusal(_asked))
        sys.stderr.flush()
        os._exit(2)
