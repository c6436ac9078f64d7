"""``--xsample-locked-text-cache N``: a locked pretrained text tower used as the fixed feature extractor it is.

Why. Under ``--lock-text --lock-text-freeze-layer-norm`` no weight of a Hugging Face text transformer
learns, yet OpenCLIP runs it over every caption of every step, in training mode: its dropout stays on
(so a step's text features are a random perturbation of the pretrained encoder's, never the encoder's
own), and its forward pass is most of a small model's step. With this flag the locked transformer runs
in eval mode, so its pooled features are exactly the pretrained encoder's, in training as in evaluation,
and each distinct caption's pooled features are kept (up to N captions, the least recently used dropped
first), so a caption runs through the transformer once per run. The projection after the pooler is not
part of the transformer: it still runs, and learns, on every step. Any ``--loss`` may use it (``clip``
included), so both sides of a comparison can. Off by default: OpenCLIP's own behaviour.

This module holds the flag and its checks at argument parsing; the cache wraps an OpenCLIP module, so
it lives with the other patches (``patches/locked_text.py``).
"""
from typing import List

FLAG = "--xsample-locked-text-cache"


def capacity(args) -> int:
    """Captions the cache keeps; 0 (the default, or arguments without the flag): no cache."""
    return int(getattr(args, "xsample_locked_text_cache", 0) or 0)


class LockedTextFlags:
    title = "Locked pretrained text tower (with --lock-text --lock-text-freeze-layer-norm; any --loss)"

    def add_to(self, parser):
        group = parser.add_argument_group(self.title)
        group.add_argument(
            FLAG, type=int, default=0, metavar="CAPTIONS",
            help="With --lock-text --lock-text-freeze-layer-norm on a Hugging Face text tower (e.g. "
                 "xs-tiny-vit-64-minilm): run the locked transformer in eval mode (no dropout: its features "
                 "are the pretrained encoder's, as in evaluation) and keep the pooled features of up to "
                 "CAPTIONS distinct captions (least recently used dropped first; 4 bytes x the tower's width "
                 "per caption, on the model's device), so each caption runs through the transformer once; "
                 "the projection still learns every step. 0 (the default): OpenCLIP's own behaviour, the "
                 "tower runs on every caption in training mode. See docs/lit-regime.md.")


LOCKED_TEXT_FLAGS = LockedTextFlags()


def flag_problems(args) -> List[str]:
    """What makes ``--xsample-locked-text-cache`` unusable for these arguments (checked at parsing)."""
    n = capacity(args)
    if n == 0:
        return []
    if n < 0:
        return [f"{FLAG} {n}: give the number of captions to keep (a positive number), or 0 for no cache"]
    problems = []
    if not (getattr(args, "lock_text", False) and getattr(args, "lock_text_freeze_layer_norm", False)) \
            or getattr(args, "lock_text_unlocked_layers", 0):
        problems.append(
            f"{FLAG} caches the features of a text transformer that cannot change: add --lock-text "
            "--lock-text-freeze-layer-norm (without the second, the tower's LayerNorms learn) and drop "
            "--lock-text-unlocked-layers; or drop the flag")
    if getattr(args, "torchcompile", False):
        problems.append(f"{FLAG} is not tested with --torchcompile: drop one of them")
    text_cfg = (_model_config(getattr(args, "model", "")) or {}).get("text_cfg")
    if text_cfg is not None and not text_cfg.get("hf_model_name"):
        problems.append(
            f"{FLAG}: --model {args.model} has OpenCLIP's own text transformer, not a Hugging Face one; the "
            "cache serves Hugging Face text towers (e.g. xs-tiny-vit-64-minilm); drop the flag")
    return problems


def _model_config(name: str):
    """The registered config of ``name``; None where OpenCLIP resolves it only when creating the model
    (``hf-hub:``, ``local-dir:``): the patch checks the tower then, before the first step."""
    if not name or ":" in name:
        return None
    import open_clip

    return open_clip.get_model_config(name)
