"""Fixture data for the eval tests, in the exact on-disk layouts users have.

- ImageNet-1k: ``val/<wnid>/`` for all 1000 wnids (what OpenCLIP's --imagenet-val takes);
- ImageNet-9: ``<variant>/val/<NN_class>/`` for all 8 test variants, as in backgrounds_challenge_data.tar.gz;
- clip_benchmark ``wds/`` sets (classification, retrieval, a background group with mixed_same/mixed_rand
  and optionally the group's own train split), written by the project's one layout writer,
  ``xsample_openclip.data.writers``;
- OpenCLIP training checkpoints of the tiny config (``{'epoch', 'name', 'state_dict'}``).
Images are tiny (32 px) random patterns, and the checkpoints random models: the tests check the tool's
numbers against independent computations, not the models' accuracy.
"""
import json
import os

import numpy as np
from PIL import Image

from xsample_openclip.data import writers
from xsample_openclip.data.writers import png_bytes

IN9_VARIANTS = ("original", "mixed_same", "mixed_rand", "mixed_next", "only_fg", "no_fg", "only_bg_b", "only_bg_t")
IN9_CLASS_FOLDERS = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
                     "06_musical instrument", "07_primate", "08_fish")
TEMPLATES = ("a photo of a {c}.", "a drawing of a {c}.")  # of the wds classification sets


def image(seed, size=32):
    """A small random RGB image (blocky, so resizing keeps some structure)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.NEAREST)


def image_folder(split_dir, class_folders, per_class, seed, ext=".png"):
    """``split_dir/<class folder>/`` with ``per_class`` images each (an ImageFolder)."""
    for c, folder in enumerate(class_folders):
        os.makedirs(os.path.join(split_dir, folder), exist_ok=True)
        for i in range(per_class):
            image(seed * 1_000_003 + c * 1009 + i).save(os.path.join(split_dir, folder, f"{folder[:9]}_{i}{ext}"))


def imagenet_wnids():
    """The 1000 ImageNet-1k wnids in label order (timm's list, independent of eval.layouts)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def imagenet(root, per_class=1, train=False):
    """``root/val/<wnid>/`` (and ``root/train/<wnid>/``) for all 1000 ImageNet-1k classes."""
    wnids = imagenet_wnids()
    image_folder(os.path.join(root, "val"), wnids, per_class, seed=1, ext=".JPEG")
    if train:
        image_folder(os.path.join(root, "train"), wnids, per_class, seed=2, ext=".JPEG")
    return str(root)


def in9(root, per_class=2):
    """``root/<variant>/val/<class>/`` for the 8 IN-9 test variants."""
    for v, variant in enumerate(IN9_VARIANTS):
        image_folder(os.path.join(root, variant, "val"), IN9_CLASS_FOLDERS, per_class, seed=10 + v)
    return str(root)


def _items(seed, n_classes, per_class):
    """(key, PNG bytes, label) for ``per_class`` images of each class, classes interleaved."""
    return [(f"s{n_classes * i + c:07d}", png_bytes(image(seed * 7919 + c * 101 + i)), c)
            for i in range(per_class) for c in range(n_classes)]


def wds_classification(folder, classes, per_class=2, seed=100, train=False, templates=TEMPLATES):
    """A clip_benchmark ``wds/`` classification set (test split, optionally a train split)."""
    for split, s in (("test", seed),) + ((("train", seed + 1),) if train else ()):
        writers.write_cb_classification(folder, _items(s, len(classes), per_class), classes, templates,
                                        split=split, image_ext="png")
    return str(folder)


def wds_retrieval(folder, n=12, seed=200):
    """A clip_benchmark ``wds/`` retrieval set: images with two captions each."""
    items = [(f"s{i:07d}", png_bytes(image(seed + i)), [f"a picture number {i}", f"an image of item {i}"])
             for i in range(n)]
    writers.write_cb_retrieval(folder, items, image_ext="png")
    return str(folder)


def wds_bg_group(folder, classes=("circle", "square", "triangle", "star", "heart", "moon"), per_class=3,
                 train=False):
    """A background-robustness group: one wds classification set per variant sub-folder (and, with
    ``train``, the group's own ``train/`` split, on which every variant's linear probe trains)."""
    sets = {variant: _items(300 + v, len(classes), per_class)
            for v, variant in enumerate(("original", "mixed_same", "mixed_rand"))}
    writers.write_cb_group(folder, sets, list(classes), TEMPLATES, image_ext="png")
    if train:
        writers.write_cb_classification(folder, _items(399, len(classes), per_class), classes, TEMPLATES,
                                        split="train", image_ext="png")
    return str(folder)


def checkpoint(path, seed, model="xs-tiny-vit-32", module_prefix=False):
    """An OpenCLIP training checkpoint of a randomly initialised model (``module.`` keys as saved under DDP)."""
    import open_clip
    import torch

    from xsample_openclip.model_configs import register

    register()
    torch.manual_seed(seed)
    state = open_clip.create_model(model).state_dict()
    if module_prefix:
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 1, "name": f"seed{seed}", "state_dict": state}, path)
    return str(path)


def local_dir_model(folder, model="xs-tiny-vit-32", decoy_weights=None):
    """A ``local-dir:`` model folder (open_clip_config.json, optionally its own weights file)."""
    import open_clip

    from xsample_openclip.model_configs import register

    register()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": open_clip.get_model_config(model), "preprocess_cfg": {}}, f)
    if decoy_weights:
        os.symlink(os.path.abspath(decoy_weights), os.path.join(folder, "open_clip_pytorch_model.bin"))
    return str(folder)
