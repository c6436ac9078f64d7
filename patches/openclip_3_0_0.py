"""The one difference of OpenCLIP 3.0.0 the patches meet: its ``CLIP`` has no ``lock_text_tower`` yet.

``open_clip_train.main`` calls ``model.lock_text_tower(...)`` under ``--lock-text``. In 3.0.0 only
``CustomTextCLIP`` (a Hugging Face text tower, ``custom_text`` or ``--force-custom-text``) has that
method; a model built as ``CLIP`` stops main with an AttributeError once the start-up checks (and the
caption calibration) have run. ``--loss xclr`` requires ``--lock-text``. So with a plugin loss such a
run is refused at argument parsing instead, naming the releases that have the method; a model whose
config cannot be read at parsing (``hf-hub:``, ``local-dir:``) is refused too, since its class is not
known before main builds it.
"""
from typing import List


def _builds_custom_text(args) -> bool:
    """Whether main builds ``CustomTextCLIP`` for ``--model`` (as 3.0.0's factory decides)."""
    if getattr(args, "force_custom_text", False):
        return True
    if args.model.startswith(("hf-hub:", "local-dir:")):
        return False  # its config is read when main builds the model: not known here
    from open_clip import get_model_config

    from xsample_openclip import model_configs

    model_configs.register()
    config = get_model_config(args.model) or {}
    return bool(config.get("custom_text") or "hf_model_name" in config.get("text_cfg", {}))


def refusals(args) -> List[str]:
    if not getattr(args, "lock_text", False) or _builds_custom_text(args):
        return []
    return [f"--lock-text with --model {args.model}: open-clip-torch 3.0.0's CLIP has no lock_text_tower "
            "(added in 3.1.0), so main would stop with an AttributeError after the start-up checks; --loss "
            "xclr needs --lock-text: pip install 'open-clip-torch[training]>=3.1,<3.4' for it"]
