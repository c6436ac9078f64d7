"""Two augmented views per training image (``--xsample-views 2``): the flags, their checks, the transform.

The paper's image-image setting (SimCLR's): every training image is augmented twice, independently,
and the loss pairs the two views. What makes a view:
- OpenCLIP's own train transform (``open_clip.image_transform``, configured by ``--aug-cfg`` /
  ``AugmentationCfg``): random resized crop (``scale``), colour jitter (``color_jitter``,
  ``color_jitter_prob``), grayscale (``gray_scale_prob``), to-tensor and the model's normalisation.
  With two views, each of these keys that ``--aug-cfg`` does not set takes SimCLR's value for small
  images (``SIMCLR_AUG``); the start-up check writes the result into ``args.aug_cfg`` before OpenCLIP
  builds its transforms, so params.txt records what was used;
- added here, because ``AugmentationCfg`` has no such keys: a horizontal flip
  (``--xsample-view-flip``, SimCLR's 0.5) and an optional Gaussian blur (``--xsample-view-blur``).
``TwoViews`` applies the view transform twice to the same image: each sample's image becomes a
``[2, C, H, W]`` tensor and a batch ``[B, 2, C, H, W]`` (patches/views.py puts it into OpenCLIP's CSV
and webdataset loaders, training only; validation and zero-shot data keep one view).
"""
from typing import List

import torch

from .registry import StartupResult

#: SimCLR's augmentation for 32-64 px images, as OpenCLIP ``AugmentationCfg`` keys: crops of 20-100 %
#: of the image (SimCLR's 8 % is for 224 px ImageNet crops), colour jitter of strength 0.5
#: (brightness/contrast/saturation 0.4, hue 0.1) with probability 0.8, grayscale with probability 0.2.
SIMCLR_AUG = {"scale": (0.2, 1.0), "color_jitter": (0.4, 0.4, 0.4, 0.1), "color_jitter_prob": 0.8,
              "gray_scale_prob": 0.2}
#: The losses that take two views per image.
VIEWS_LOSSES = ("xclr", "xsample")
#: Gaussian blur: kernel about a tenth of the image side (odd, at least 3), sigma drawn from this range.
BLUR_SIGMA = (0.1, 2.0)


def views_of(args) -> int:
    """Views per training image the run asks for (1 without the flag)."""
    return int(getattr(args, "xsample_views", 1) or 1)


class ViewFlags:
    title = "Two augmented views per image (--xsample-views 2; --loss xclr, --loss xsample)"
    kept = ("xsample_views",)

    def add_to(self, parser):
        group = parser.add_argument_group(self.title)
        group.add_argument(
            "--xsample-views", type=int, choices=(1, 2), default=1,
            help="Augmented views of each training image: 2 gives SimCLR's two independent views (required "
                 "by --loss xclr; with --loss xsample the image-text term is averaged over both views and "
                 "--xsample-image-weight adds X-CLR over the 2N views). Augmentation: OpenCLIP's --aug-cfg "
                 "(unset keys take SimCLR's values: scale=(0.2,1.0), color_jitter=(0.4,0.4,0.4,0.1), "
                 "color_jitter_prob=0.8, gray_scale_prob=0.2) plus the two flags below. Training data only.")
        group.add_argument(
            "--xsample-view-flip", type=float, default=0.5, metavar="P",
            help="With --xsample-views 2: probability of a horizontal flip of each view (SimCLR: 0.5).")
        group.add_argument(
            "--xsample-view-blur", type=float, default=0.0, metavar="P",
            help="With --xsample-views 2: probability of a Gaussian blur of each view (kernel about a tenth "
                 f"of the image side, sigma in {BLUR_SIGMA}); 0 (the default) turns it off, as SimCLR does for "
                 "small images.")

    def validate(self, args) -> List[str]:
        problems = []
        for flag in ("xsample_view_flip", "xsample_view_blur"):
            value = getattr(args, flag)
            if not 0.0 <= value <= 1.0:
                problems.append(f"--{flag.replace('_', '-')} must be a probability in [0, 1], got {value}")
        if views_of(args) == 2:
            aug = args.aug_cfg or {}
            if aug.get("use_timm"):
                problems.append("--xsample-views 2 builds each view with OpenCLIP's own train transform, not "
                                "timm's; drop use_timm from --aug-cfg")
            jitter = aug.get("color_jitter")
            if jitter is not None and not (isinstance(jitter, (tuple, list)) and len(jitter) == 4):
                problems.append(f"--aug-cfg color_jitter={jitter!r}: with --xsample-views 2 OpenCLIP applies it "
                                "with color_jitter_prob, which needs four values, e.g. "
                                "color_jitter='(0.4,0.4,0.4,0.1)'")
            if args.dataset_type == "synthetic":
                problems.append("--xsample-views 2 needs --dataset-type csv or webdataset (OpenCLIP's "
                                "synthetic data has no image to augment)")
        return problems

    def startup(self, args) -> StartupResult:
        """With two views: ``--aug-cfg`` completed with SimCLR's values, before OpenCLIP builds transforms."""
        result = StartupResult()
        if views_of(args) != 2:
            return result
        given = dict(args.aug_cfg or {})
        aug = {**SIMCLR_AUG, **given}
        result.updates["aug_cfg"] = aug
        result.notes.append(
            f"Two views per training image (--xsample-views 2), each: OpenCLIP's train transform with aug_cfg "
            f"{aug} ({', '.join(sorted(given)) or 'no key'} from --aug-cfg, the rest SimCLR's), horizontal flip "
            f"p={args.xsample_view_flip}, Gaussian blur p={args.xsample_view_blur}; rows 2i and 2i+1 of the "
            "image batch the model sees are sample i's two views")
        return result


VIEW_FLAGS = ViewFlags()


# --- the transform (used by patches/views.py) -------------------------------------------------------

class TwoViews:
    """Applies ``transform`` twice, independently, to one image: a ``[2, C, H, W]`` tensor."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return torch.stack([self.transform(image), self.transform(image)])

    def __repr__(self):
        return f"TwoViews({self.transform!r})"


def _image_side(train_transform) -> int:
    for t in getattr(train_transform, "transforms", ()):
        size = getattr(t, "size", None)
        if size is not None:
            return int(size if isinstance(size, int) else min(size))
    raise ValueError(f"--xsample-views 2: no crop size found in OpenCLIP's train transform {train_transform!r}")


def view_transform(train_transform, flip: float, blur: float):
    """One view: optional horizontal flip, OpenCLIP's train transform, optional Gaussian blur.

    The flip comes first (a random crop of a flipped image is distributed as a flipped random crop);
    the blur runs on the normalised tensor (a normalised blur equals a blurred normalisation: the
    kernel sums to 1 and normalisation is affine per channel).
    """
    from torchvision import transforms as T

    steps = []
    if flip > 0:
        steps.append(T.RandomHorizontalFlip(flip))
    steps.append(train_transform)
    if blur > 0:
        kernel = max(3, int(0.1 * _image_side(train_transform)) // 2 * 2 + 1)
        steps.append(T.RandomApply([T.GaussianBlur(kernel, BLUR_SIGMA)], p=blur))
    return T.Compose(steps) if len(steps) > 1 else train_transform


def two_view_transform(train_transform, args) -> TwoViews:
    return TwoViews(view_transform(train_transform, args.xsample_view_flip, args.xsample_view_blur))
