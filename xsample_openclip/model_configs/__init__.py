"""Tiny CLIP configs shipped with the package, for CPU tests and the demo.

``register()`` adds this folder to OpenCLIP's config search path, so names such as
``xs-tiny-vit-64`` resolve in ``create_model``, ``get_tokenizer`` and clip_benchmark alike.
``xs-tiny-sigmoid-*`` initialise a logit bias (-10) and logit scale (10) as SigLIP does, for the sigmoid
losses. No name here may contain "siglip": OpenCLIP 3.3.0's ``get_tokenizer`` gives such names the
SigLIP tokenizer, which it downloads.
"""
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
NAMES = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))


def register():
    """Add the package's model configs to OpenCLIP (idempotent)."""
    import open_clip
    from open_clip import factory

    if CONFIG_DIR not in [Path(p) for p in factory._MODEL_CONFIG_PATHS]:
        open_clip.add_model_config(CONFIG_DIR)
    return NAMES
