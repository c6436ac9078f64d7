"""Check dataset folders on disk and turn them into DatasetSpecs.

clip_benchmark would try to download a missing ImageNet and fails late (or silently mislabels) on a
partial folder, so every root is checked up front and a problem is reported with the files expected.
"""
import os

from . import in9
from .specs import (IN1K_TO_IN9, LINEAR_PROBE, ZEROSHOT_CLASSIFICATION, ZEROSHOT_RETRIEVAL, DatasetSpec,
                    SetupError)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def imagenet_wnids():
    """The 1000 ImageNet-1k wnids in label order, from the list timm ships (no download, no heavy import)."""
    import importlib.util

    spec = importlib.util.find_spec("timm")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(location, "data", "_info", "imagenet_synsets.txt")
        if os.path.isfile(path):
            with open(path) as f:
                return [line.strip() for line in f if line.strip()]
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def _has_image(folder):
    with os.scandir(folder) as entries:
        return any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in entries)


def _class_folder_problems(split_dir, expected):
    """Compare ``split_dir``'s sub-folders with ``expected``; a list of human-readable problems."""
    if not os.path.isdir(split_dir):
        return [f"{split_dir} does not exist"]
    present = {e.name for e in os.scandir(split_dir) if e.is_dir()}
    problems = []
    missing = [c for c in expected if c not in present]
    extra = sorted(present - set(expected))
    empty = [c for c in expected if c in present and not _has_image(os.path.join(split_dir, c))]
    for what, items in (("missing class folders", missing), ("unexpected folders", extra),
                        ("class folders without images", empty)):
        if items:
            shown = ", ".join(repr(i) for i in items[:5]) + (", ..." if len(items) > 5 else "")
            problems.append(f"{split_dir}: {len(items)} {what} ({shown})")
    return problems


def _fail(title, root, expected_lines, problems):
    lines = [f"{title} root {root!r} is missing or incomplete (nothing is downloaded).", "Expected:"]
    lines += [f"  {line}" for line in expected_lines]
    lines += ["Found:"] + [f"  {p}" for p in problems]
    raise SetupError("\n".join(lines))


def imagenet_specs(root):
    """ImageNet-1k from ``root/val/<wnid>/`` (and ``root/train/<wnid>/`` for the linear probe, if present)."""
    wnids = imagenet_wnids()
    expected = [f"{root}/val/<wnid>/<images>, one folder for each of the 1000 ImageNet-1k wnids "
                f"({wnids[0]} ... {wnids[-1]}) and no other folder: the folder OpenCLIP's --imagenet-val takes",
                f"optionally {root}/train/<wnid>/<images> in the same layout, for the linear probe"]
    if not os.path.isdir(root):
        _fail("ImageNet-1k", root, expected, [f"{root} does not exist"])
    problems = _class_folder_problems(os.path.join(root, "val"), wnids)
    if problems and os.path.isdir(os.path.join(root, wnids[0])):
        problems.append(f"{root} itself holds wnid folders: pass the folder above 'val/' as --imagenet-root")
    has_train = os.path.isdir(os.path.join(root, "train"))
    if has_train:
        problems += _class_folder_problems(os.path.join(root, "train"), wnids)
    if problems:
        _fail("ImageNet-1k", root, expected, problems)
    tasks = (ZEROSHOT_CLASSIFICATION,) + ((LINEAR_PROBE,) if has_train else ())
    notes = () if has_train else (f"imagenet1k: linear probe skipped, no train split ({root}/train/<wnid>/)",)
    # clip_benchmark's 'imagenet1k' needs meta.bin and downloads when it is missing; 'imagenet1k-unverified'
    # reads the same val/<wnid>/ folders with the same OpenAI class names and templates.
    return [DatasetSpec("imagenet1k", "imagenet1k-unverified", os.path.abspath(root), tasks, notes=notes)]


def in9_specs(root):
    """The 8 IN-9 test variants from the released layout ``root/<variant>/val/<class>/``."""
    expected = [f"{root}/<variant>/val/<class>/<images> for each variant {', '.join(in9.VARIANTS)}",
                f"with the class folders {', '.join(repr(c) for c in in9.CLASS_FOLDERS)}",
                "(the layout of backgrounds_challenge_data.tar.gz; pass its bg_challenge/ folder)"]
    if not os.path.isdir(root):
        _fail("ImageNet-9", root, expected, [f"{root} does not exist"])
    problems = []
    for variant in in9.VARIANTS:
        problems += _class_folder_problems(os.path.join(root, variant, "val"), in9.CLASS_FOLDERS)
    if problems and os.path.isdir(os.path.join(root, "bg_challenge")):
        problems.append(f"{root}/bg_challenge exists: pass that folder as --in9-root")
    if problems:
        _fail("ImageNet-9", root, expected, problems)
    specs = []
    for variant in in9.VARIANTS:
        specs.append(DatasetSpec(
            f"in9/{variant}", "imagenet1k-unverified", os.path.abspath(os.path.join(root, variant)),
            (ZEROSHOT_CLASSIFICATION, IN1K_TO_IN9), classnames=in9.CLASSNAMES, group="in9", variant=variant,
            notes=("in9: linear probe skipped, IN-9 has no train split",)))
    return specs


def _wds_problems(folder):
    """Problems with one clip_benchmark ``wds/`` folder (test split only)."""
    nshards_file = os.path.join(folder, "test", "nshards.txt")
    if not os.path.isfile(nshards_file):
        return [f"{nshards_file} does not exist"]
    try:
        nshards = int(open(nshards_file).read().strip())
    except ValueError:
        return [f"{nshards_file} does not hold a number"]
    problems = [f"{folder}/test/{i}.tar does not exist" for i in range(nshards)
                if not os.path.isfile(os.path.join(folder, "test", f"{i}.tar"))]
    if _wds_type(folder) != "retrieval":
        problems += [f"{folder}/{f} does not exist" for f in ("classnames.txt", "zeroshot_classification_templates.txt")
                     if not os.path.isfile(os.path.join(folder, f))]
    return problems


def _wds_type(folder):
    path = os.path.join(folder, "dataset_type.txt")
    return open(path).read().strip().lower() if os.path.isfile(path) else "classification"


def _wds_spec(name, folder, group=None, variant=None):
    retrieval = _wds_type(folder) == "retrieval"
    tasks = (ZEROSHOT_RETRIEVAL,) if retrieval else (ZEROSHOT_CLASSIFICATION,)
    notes = ()
    where = f"{os.path.dirname(folder)}/<variant>" if group else folder  # one note for a whole group
    if retrieval:
        notes = (f"{group or name}: linear probe skipped, retrieval set",)
    elif os.path.isfile(os.path.join(folder, "train", "nshards.txt")):
        tasks += (LINEAR_PROBE,)
    else:
        notes = (f"{group or name}: linear probe skipped, no train split ({where}/train/nshards.txt)",)
    cb_name = "wds/" + name.replace("/", "_")
    return DatasetSpec(name, cb_name, os.path.abspath(folder), tasks, group=group, variant=variant, notes=notes)


def _variant_order(variant):
    """IN-9's variant order first (original, mixed_same, mixed_rand, ...), other names alphabetically after."""
    return (in9.VARIANTS.index(variant) if variant in in9.VARIANTS else len(in9.VARIANTS), variant)


def wds_specs(name, folder):
    """A clip_benchmark ``wds/`` set, or a group of them (one sub-folder per variant, e.g. mixed_same/).

    The task comes from the set: ``dataset_type.txt`` = retrieval -> zeroshot_retrieval, else
    zeroshot_classification. A group's sets are named ``NAME/<sub-folder>``.
    """
    expected = [f"{folder}/test/nshards.txt and {folder}/test/0.tar ... (clip_benchmark's wds/ layout), plus "
                "classnames.txt and zeroshot_classification_templates.txt unless dataset_type.txt says retrieval",
                f"or, for a group of variants, that layout in each sub-folder {folder}/<variant>/"]
    if not os.path.isdir(folder):
        _fail(f"wds dataset {name!r}", folder, expected, [f"{folder} does not exist"])
    if os.path.isdir(os.path.join(folder, "test")):
        problems = _wds_problems(folder)
        if problems:
            _fail(f"wds dataset {name!r}", folder, expected, problems)
        return [_wds_spec(name, folder)]
    subs = sorted((e.name for e in os.scandir(folder) if e.is_dir() and os.path.isdir(os.path.join(e.path, "test"))),
                  key=_variant_order)
    if not subs:
        _fail(f"wds dataset {name!r}", folder, expected, [f"{folder} has no test/ folder and no sub-folder with one"])
    problems = [p for sub in subs for p in _wds_problems(os.path.join(folder, sub))]
    if problems:
        _fail(f"wds dataset {name!r}", folder, expected, problems)
    return [_wds_spec(f"{name}/{sub}", os.path.join(folder, sub), group=name, variant=sub) for sub in subs]
