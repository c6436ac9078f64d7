"""Turn ``--model`` plus each ``--run`` checkpoint into the (model, pretrained) pair clip_benchmark loads.

A registered name takes the checkpoint as ``pretrained``. A ``local-dir:`` model ignores ``pretrained``
in open_clip, so each run gets its own small folder: links to the config files plus the checkpoint under
a weights name open_clip looks for.
"""
import os
from pathlib import Path

from .specs import SetupError

LOCAL_DIR = "local-dir:"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")  # what open_clip picks up as weights in a local dir


def register_package_configs():
    """Make the package's tiny configs (xs-tiny-vit-32/64) resolvable in this process."""
    from xsample_openclip.model_configs import register

    register()


def check_model(model):
    """Fail early, with the choices, if ``model`` cannot be created."""
    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR):])
        if not (folder / "open_clip_config.json").is_file():
            raise SetupError(f"--model {model}: {folder}/open_clip_config.json does not exist")
        return
    if model.startswith("hf-hub:"):
        raise SetupError(f"--model {model}: hf-hub models ignore the checkpoint; use a registered name or local-dir:")
    import open_clip

    register_package_configs()
    if open_clip.get_model_config(model) is None:
        raise SetupError(f"--model {model!r} is not a registered OpenCLIP model (see open_clip.list_models()) "
                         "and not a local-dir: folder")


def check_checkpoint(model, run):
    """A run's checkpoint must be a file (or, for a registered model, a known pretrained tag)."""
    if os.path.isfile(run.checkpoint):
        return
    if not model.startswith(LOCAL_DIR):
        import open_clip

        if open_clip.get_pretrained_cfg(model, run.checkpoint):
            return
    raise SetupError(f"--run {run.name}={run.checkpoint}: checkpoint file not found")


def model_for_run(model, run, work_dir):
    """The (model, pretrained) strings to give clip_benchmark for ``run``."""
    checkpoint = os.path.abspath(run.checkpoint) if os.path.isfile(run.checkpoint) else run.checkpoint
    if not model.startswith(LOCAL_DIR):
        return model, checkpoint
    source = Path(model[len(LOCAL_DIR):]).resolve()
    target = Path(work_dir, "models", run.name)
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():
        old.unlink()
    for entry in source.iterdir():
        if entry.is_file() and entry.suffix not in _WEIGHT_SUFFIXES:
            (target / entry.name).symlink_to(entry)
    (target / "open_clip_pytorch_model.bin").symlink_to(checkpoint)
    return LOCAL_DIR + str(target.resolve()), checkpoint
