"""The demo's real image-caption data: OpenMoji emoji with their Unicode names (see ``emoji.py``).

Names are imported lazily so that ``python -m xsample_openclip.data.emoji`` runs its module only once.
"""
__all__ = ["BG_VARIANTS", "DemoData", "DemoParams", "build_demo_data"]


def __getattr__(name):
    if name in __all__:
        from . import emoji

        return getattr(emoji, name)
    raise AttributeError(name)
