"""The demo's data sets: how each is built, which held-out sets a split evaluates, which numbers lead.

- ``emoji`` (default): OpenMoji emoji with their Unicode names, zero-shot concepts on held-out emoji,
  retrieval, and ImageNet-9-style background variants (``xsample_openclip.data.emoji``). Data variant
  ``decorrelated``: in training a concept's images sit on every habitat alike (its own one time in
  ten), so the background carries no information about the concept (the background question).
- ``shapes``: attribute-heavy captions, unseen colour-shape pairs at test time
  (``xsample_openclip.data.shapes_data``). Data variants ``pair`` and ``mixed`` are its other caption
  styles (``shapes.CAPTION_STYLES``: colour and shape only; full or pair caption per image), with the
  same images and held-out sets, so a default can be checked on three kinds of caption.
Each split (``val`` for choices, ``test`` for the report) has its own held-out sets.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple


PROBE = "linear_probe"  # the eval task of the probe rows (``eval/linear_probe.py``)


@dataclass(frozen=True)
class Headline:
    """One number of the summary: ``dataset`` is a set name with ``{split}`` in it; ``task`` (e.g.
    ``linear_probe``) where the metric alone does not tell the task (a BG-Gap)."""

    dataset: str
    metric: str
    label: str
    lower_is_better: bool = False
    task: str = ""

    def at(self, split: str) -> str:
        return self.dataset.format(split=split)


@dataclass(frozen=True)
class DemoDataset:
    name: str
    build: Callable  # (folder, data_seed, image_size, variant, eval_scale) -> DemoData
    headline: Tuple[Headline, ...]
    primary: Tuple[str, ...]  # headline labels averaged into the number that settings are chosen by
    variants: Tuple[str, ...] = ("default",)
    probe: Tuple[Headline, ...] = ()  # the linear-probe numbers, added to the headline by ``--probe``

    def eval_specs(self, data, split: str):
        """(clip_benchmark specs of the split's sets, BG-Gap pairs)."""
        from ..eval.compare import BgGap, wds_specs

        specs = [s for name in data.splits[split] for s in wds_specs(name, str(data.eval_sets[name]))]
        bg = data.bg_sets.get(split, {})
        gaps = [BgGap(f"emoji_bg_{split}", bg["mixed_same"], bg["mixed_rand"])] if "mixed_same" in bg else []
        return specs, gaps


def _build_emoji(folder: Path, seed: int, image_size: int, variant: str, eval_scale: int = 1):
    """``eval_scale`` K: K times the images per class of the zero-shot and background sets (renders of the
    same held-out emoji: the number of distinct held-out emoji is fixed by the catalogue and the split)."""
    from ..data import build_demo_data
    from ..data.params import DemoParams

    options = {"habitat_match_rate": 0.1} if variant == "decorrelated" else {}
    if eval_scale != 1:
        d = DemoParams()
        options.update(cls_images_per_class=d.cls_images_per_class * eval_scale,
                       bg_images_per_class=d.bg_images_per_class * eval_scale)
    return build_demo_data(folder, seed=seed, image_size=image_size, **options)


def _build_shapes(folder: Path, seed: int, image_size: int, variant: str, eval_scale: int = 1):
    """``eval_scale`` K: K times the images of each split's unseen pairs."""
    from ..data.shapes_data import ShapesParams, build_shapes_data

    return build_shapes_data(folder, seed=seed, image_size=image_size,
                             eval_images=ShapesParams().eval_images * eval_scale,
                             caption_style="full" if variant == "default" else variant)


EMOJI = DemoDataset(
    name="emoji",
    build=_build_emoji,
    headline=(
        Headline("emoji_cls_{split}", "acc1", "zero-shot top-1, 10 concepts"),
        Headline("emoji_cls_{split}", "acc5", "zero-shot top-5"),
        Headline("emoji_ret_{split}", "image_retrieval_recall@5", "text-to-image retrieval R@5"),
        Headline("emoji_ret_{split}", "text_retrieval_recall@5", "image-to-text retrieval R@5"),
        Headline("emoji_bg_{split}_original", "acc1", "backgrounds: original, top-1"),
        Headline("emoji_bg_{split}_only_fg", "acc1", "backgrounds: only_fg (plain), top-1"),
        Headline("emoji_bg_{split}_mixed_same", "acc1", "backgrounds: mixed_same, top-1"),
        Headline("emoji_bg_{split}_mixed_rand", "acc1", "backgrounds: mixed_rand, top-1"),
        Headline("emoji_bg_{split}_only_bg", "acc1", "backgrounds: only_bg (no object), top-1"),
        Headline("emoji_bg_{split}", "bg_gap", "BG-Gap = mixed_same - mixed_rand", lower_is_better=True),
    ),
    primary=("zero-shot top-1, 10 concepts",),
    variants=("default", "decorrelated"),
    probe=(
        Headline("emoji_cls_{split}", "lp_acc1", "linear probe top-1, 10 concepts", task=PROBE),
        Headline("emoji_bg_{split}_only_bg", "lp_acc1", "probe, backgrounds: only_bg, top-1", task=PROBE),
        Headline("emoji_bg_{split}", "bg_gap", "probe BG-Gap = mixed_same - mixed_rand", True, task=PROBE),
    ),
)

SHAPES = DemoDataset(
    name="shapes",
    build=_build_shapes,
    headline=(
        Headline("shapes_colour_{split}", "acc1", "unseen pairs: colour top-1 (8 colours)"),
        Headline("shapes_shape_{split}", "acc1", "unseen pairs: shape top-1 (4 shapes)"),
        Headline("shapes_pair_{split}", "acc1", "unseen pairs: colour+shape top-1 (32 pairs)"),
    ),
    primary=("unseen pairs: colour top-1 (8 colours)", "unseen pairs: shape top-1 (4 shapes)"),
    variants=("default", "pair", "mixed"),  # caption styles; "default" is "full"
    probe=(
        Headline("shapes_colour_{split}", "lp_acc1", "linear probe, unseen pairs: colour top-1", task=PROBE),
        Headline("shapes_shape_{split}", "lp_acc1", "linear probe, unseen pairs: shape top-1", task=PROBE),
    ),
)

DATASETS: Dict[str, DemoDataset] = {d.name: d for d in (EMOJI, SHAPES)}


def data_folder(out: Path, dataset: DemoDataset, variant: str, seed: int, image_size: int, eval_scale: int = 1) -> Path:
    suffix = ("" if variant == "default" else f"-{variant}") + ("" if eval_scale == 1 else f"-eval{eval_scale}x")
    return out / "data" / f"{dataset.name}{suffix}-seed{seed}-{image_size}px"


def primary_labels(dataset: DemoDataset) -> List[str]:
    return list(dataset.primary)
