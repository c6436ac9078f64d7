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


def _has_train(folder):
    return os.path.isfile(os.path.join(folder, "train", "nshards.txt"))


def _wds_spec(name, folder, group=None, variant=None, train_root=None):
    retrieval = _wds_type(folder) == "retrieval"
    tasks = (ZEROSHOT_RETRIEVAL,) if retrieval else (ZEROSHOT_CLASSIFICATION,)
    notes = ()
    where = f"{os.path.dirname(folder)}/<variant>" if group else folder  # one note for a whole group
    if retrieval:
        notes, train_root = (f"{group or name}: linear probe skipped, retrieval set",), None
    elif train_root or _has_train(folder):
        tasks += (LINEAR_PROBE,)
    else:
        notes = (f"{group or name}: linear probe skipped, no train split ({where}/train/nshards.txt"
                 + (f" or {os.path.dirname(folder)}/train/nshards.txt)" if group else ")"),)
    cb_name = "wds/" + name.replace("/", "_")
    return DatasetSpec(name, cb_name, os.path.abspath(folder), tasks, group=group, variant=variant, notes=notes,
                       train_root=train_root)


def _classnames(folder):
    path = os.path.join(folder, "classnames.txt")
    return open(path).read().split("\n") if os.path.isfile(path) else None


def _check_probe_train(spec, folder, flag):
    """``folder`` must be a wds/ set with a train split and the class names of ``spec``."""
    expected = [f"{folder}/train/nshards.txt and {folder}/train/0.tar ..., and {folder}/classnames.txt "
                f"identical to {spec.root}/classnames.txt"]
    problems = [] if _has_train(folder) else [f"{folder}/train/nshards.txt does not exist"]
    if _classnames(folder) != _classnames(spec.root):
        problems.append(f"{folder}/classnames.txt differs from {spec.root}/classnames.txt (or is missing)")
    if problems:
        _fail(f"{flag} training split for {spec.name!r}", folder, expected, problems)


def attach_probe_train(specs, name, folder):
    """Specs where the set (or every set of the group) ``name`` gets its linear probe trained on
    ``folder/train/`` (a wds/ classification set with the same class names), e.g. a probe training set
    written by ``probe_sets`` for a test-only zero-shot set."""
    import dataclasses

    targets = [s for s in specs if name in (s.name, s.group) and s.cb_dataset.startswith("wds/")]
    if not targets:
        raise SetupError(f"--probe-train {name}=...: no wds dataset or group named {name!r} "
                         f"(datasets: {', '.join(s.name for s in specs)})")
    folder = os.path.abspath(folder)
    out = []
    for spec in specs:
        if spec in targets:
            if ZEROSHOT_RETRIEVAL in spec.tasks:
                raise SetupError(f"--probe-train {name}=...: {spec.name} is a retrieval set; a probe needs classes")
            _check_probe_train(spec, folder, "--probe-train")
            spec = dataclasses.replace(spec, train_root=folder, notes=(),
                                       tasks=tuple(dict.fromkeys(spec.tasks + (LINEAR_PROBE,))))
        out.append(spec)
    return out


def _variant_order(variant):
    """IN-9's variant order first (original, mixed_same, mixed_rand, ...), other names alphabetically after."""
    return (in9.VARIANTS.index(variant) if variant in in9.VARIANTS else len(in9.VARIANTS), variant)


def wds_specs(name, folder):
    """A clip_benchmark ``wds/`` set, or a group of them (one sub-folder per variant, e.g. mixed_same/).

    The task comes from the set: ``dataset_type.txt`` = retrieval -> zeroshot_retrieval, else
    zeroshot_classification, plus linear_probe where there is a train split. A group's sets are named
    ``NAME/<sub-folder>``; a group folder with its own ``train/`` split (and ``classnames.txt``) trains the
    probe of every variant on it, as ImageNet-9's probe trains on original images and tests on each variant.
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
    specs = [_wds_spec(f"{name}/{sub}", os.path.join(folder, sub), group=name, variant=sub) for sub in subs]
    if _has_train(folder):  # the group's own training images: every variant's probe trains on them (IN-9 style)
        specs = attach_probe_train(specs, name, folder)
    return specs
