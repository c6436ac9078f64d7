"""Fixture data for the eval tests, in the exact on-disk layouts users have.

- ImageNet-1k: ``val/<wnid>/`` for all 1000 wnids (what OpenCLIP's --imagenet-val takes);
- ImageNet-9: ``<variant>/val/<NN_class>/`` for all 8 test variants, as in backgrounds_challenge_data.tar.gz;
- clip_benchmark ``wds/`` sets (classification, retrieval, a background group with mixed_same/mixed_rand);
- OpenCLIP training checkpoints of the tiny config (``{'epoch', 'name', 'state_dict'}``).
Images are tiny (32 px) random patterns: the tests check plumbing and arithmetic, not accuracy.
"""
import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

IN9_VARIANTS = ("original", "mixed_same", "mixed_rand", "mixed_next", "only_fg", "no_fg", "only_bg_b", "only_bg_t")
IN9_CLASS_FOLDERS = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
                     "06_musical instrument", "07_primate", "08_fish")


def image(seed, size=32):
    """A small random RGB image (blocky, so resizing keeps some structure)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.NEAREST)


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_folder(split_dir, class_folders, per_class, seed, ext=".png"):
    for c, folder in enumerate(class_folders):
        os.makedirs(os.path.join(split_dir, folder), exist_ok=True)
        for i in range(per_class):
            image(seed * 1_000_003 + c * 1009 + i).save(os.path.join(split_dir, folder, f"{folder[:9]}_{i}{ext}"))


def imagenet_wnids():
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


def _write_shard(path, samples):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with open(os.path.join(os.path.dirname(path), "nshards.txt"), "w") as f:
        f.write("1\n")


def wds_classification(folder, classes, per_class=2, seed=100, train=False,
                       templates=("a photo of a {c}.", "a drawing of a {c}.")):
    """A clip_benchmark ``wds/`` classification set (test split, optionally a train split)."""
    for split, s in (("test", seed),) + ((("train", seed + 1),) if train else ()):
        samples = [(f"s{len(classes) * i + c:07d}", {"png": png_bytes(image(s * 7919 + c * 101 + i)),
                                                     "cls": str(c).encode()})
                   for i in range(per_class) for c in range(len(classes))]
        _write_shard(os.path.join(folder, split, "0.tar"), samples)
    with open(os.path.join(folder, "classnames.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    with open(os.path.join(folder, "zeroshot_classification_templates.txt"), "w") as f:
        f.write("\n".join(templates) + "\n")
    return str(folder)


def wds_retrieval(folder, n=12, seed=200):
    """A clip_benchmark ``wds/`` retrieval set: images with two captions each."""
    samples = [(f"s{i:07d}", {"png": png_bytes(image(seed + i)),
                              "txt": f"a picture number {i}\nan image of item {i}".encode()}) for i in range(n)]
    _write_shard(os.path.join(folder, "test", "0.tar"), samples)
    with open(os.path.join(folder, "dataset_type.txt"), "w") as f:
        f.write("retrieval\n")
    return str(folder)


def wds_bg_group(folder, classes=("circle", "square", "triangle", "star", "heart", "moon"), per_class=3):
    """A background-robustness group: one wds classification set per variant sub-folder."""
    for v, variant in enumerate(("original", "mixed_same", "mixed_rand")):
        wds_classification(os.path.join(folder, variant), list(classes), per_class, seed=300 + v)
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
