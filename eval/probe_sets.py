"""Linear-probe training sets from the demo data, so its held-out zero-shot sets can be probed too.

    python -m xsample_openclip.eval.probe_sets --data DEMO_DATA_DIR --out DIR [--split test]

prints the ``eval.compare`` arguments (``--wds``, ``--probe-train``, ``--bg-gap``) for the split's sets.

The demo's held-out sets are test-only; a probe needs labelled training images, which the demo's own
training images are (``train.csv`` records each image's concept, colour and shape). Each probe set is one
clip_benchmark ``wds/`` classification set with only a ``train/`` split (written by ``writers``, the one
writer of that layout), at most ``max_per_class`` images per class, drawn with a seed:

- emoji data, ``emoji_concepts``: training images of the concept emoji, labelled with their concept. It
  trains the probe of ``emoji_cls_<split>`` (held-out emoji, plain backgrounds) and of every background
  variant ``emoji_bg_<split>_<variant>``: as in ImageNet-9, the probe trains on images with their usual
  backgrounds and is tested on only_fg / mixed_same / mixed_rand / only_bg, so a BG-Gap by probe
  (mixed_same - mixed_rand) sits next to the zero-shot one.
- shapes data, ``shapes_colour`` and ``shapes_shape``: training images (seen colour-shape pairs) labelled
  by colour or by shape; they train the probes of ``shapes_colour_<split>`` / ``shapes_shape_<split>``,
  whose images are the unseen pairs. ``shapes_pair_<split>`` has no probe: its classes never occur in
  training.
The weight decay of each probe is chosen on a validation split of these training images (``linear_probe``).
"""
import argparse
import csv
import hashlib
import json
import random
import sys
from pathlib import Path

from .layouts import attach_probe_train
from .specs import SetupError

SOURCE_RECORD = "probe_source.json"
VERSION = 1
MAX_PER_CLASS = 200  # 10 emoji concepts -> at most 2000 images; shapes: 8 colours / 4 shapes

#: per data kind: probe set -> (train.csv column holding the label, prefixes of the sets it probes)
PROBES = {
    "emoji": {"emoji_concepts": ("concept", ("emoji_cls_", "emoji_bg_"))},
    "shapes": {"shapes_colour": ("colour", ("shapes_colour_",)), "shapes_shape": ("shape", ("shapes_shape_",))},
}


class ProbeSetError(SetupError):
    """Demo data that cannot give a probe training set (no train.csv, missing images)."""


def _manifest(data_root):
    path = Path(data_root) / "manifest.json"
    if not path.is_file():
        raise ProbeSetError(f"{path} does not exist: pass a folder built by xsample_openclip.data.emoji or "
                            ".shapes_data")
    return json.loads(path.read_text())


def probed_sets(manifest):
    """{held-out set name: probe set name} for every set of the data that a probe set serves."""
    probes = PROBES.get(manifest.get("kind", "emoji"), {})
    return {name: probe for name in manifest["eval_sets"] for probe, (_, prefixes) in probes.items()
            if name.startswith(prefixes) and manifest["eval_sets"][name]["task"] == "zeroshot_classification"}


def _image_path(data_root, filepath):
    path = Path(filepath)
    if path.is_file():
        return path
    moved = Path(data_root) / "train" / "images" / path.name
    if moved.is_file():
        return moved
    raise ProbeSetError(f"training image {filepath} (or {moved}) does not exist: rebuild the demo data")


def _labelled_rows(data_root, manifest, column):
    """(image path, label index) of every training image with a value in ``column`` (by class name order
    of the held-out sets)."""
    csv_rel = manifest["train"].get("csv")
    if not csv_rel:
        raise ProbeSetError(f"{data_root} has no train.csv (built with write_csv=False): rebuild it with the "
                            "default write_csv=True; the probe needs the labels recorded there")
    with open(Path(data_root) / csv_rel, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and column not in rows[0]:
        raise ProbeSetError(f"{data_root}/{csv_rel} has no {column!r} column: rebuild the demo data")
    return [(row["filepath"], row[column]) for row in rows if row[column]]


def _classnames_of(data_root, manifest, prefixes):
    """Class names (and templates) of the first held-out set the probe serves: the probe's label order."""
    name = next(n for n in manifest["eval_sets"] if n.startswith(prefixes))
    folder = Path(data_root) / manifest["eval_sets"][name]["path"]
    return ((folder / "classnames.txt").read_text().splitlines(),
            (folder / "zeroshot_classification_templates.txt").read_text().splitlines())


def _select(rows, classnames, max_per_class, seed):
    """At most ``max_per_class`` rows per class, drawn with ``seed``, in a fixed order."""
    by_class = {c: sorted(p for p, label in rows if label == c) for c in classnames}
    unknown = sorted({label for _, label in rows} - set(classnames))
    if unknown:
        raise ProbeSetError(f"training labels {unknown} are not among the held-out sets' classes {classnames}")
    rng = random.Random(f"probe:{seed}")
    chosen = [(p, c) for c, paths in by_class.items()
              for p in (rng.sample(paths, max_per_class) if len(paths) > max_per_class else paths)]
    rng.shuffle(chosen)
    return [(p, classnames.index(c)) for p, c in chosen]


def _source_record(data_root, max_per_class, seed):
    digest = hashlib.sha256((Path(data_root) / "manifest.json").read_bytes()).hexdigest()
    return {"version": VERSION, "manifest_sha256": digest, "max_per_class": max_per_class, "seed": seed}


def write_probe_sets(data_root, out, max_per_class=MAX_PER_CLASS, seed=0):
    """Write (or reuse) the probe training sets of a demo data folder under ``out``; {probe name: folder}."""
    from xsample_openclip.data.writers import write_cb_classification

    if max_per_class < 1:
        raise ProbeSetError(f"max_per_class must be at least 1, got {max_per_class}")
    manifest = _manifest(data_root)
    record = _source_record(data_root, max_per_class, seed)
    written = {}
    for probe, (column, prefixes) in PROBES.get(manifest.get("kind", "emoji"), {}).items():
        folder = Path(out) / probe
        written[probe] = folder
        if (folder / SOURCE_RECORD).is_file() and json.loads((folder / SOURCE_RECORD).read_text()) == record:
            continue
        classnames, templates = _classnames_of(data_root, manifest, prefixes)
        rows = _select(_labelled_rows(data_root, manifest, column), classnames, max_per_class, seed)
        items = [(f"{i:06d}", _image_path(data_root, p).read_bytes(), label) for i, (p, label) in enumerate(rows)]
        write_cb_classification(folder, items, classnames, templates, split="train")
        (folder / SOURCE_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return written


def add_linear_probe(specs, data_root, out, max_per_class=MAX_PER_CLASS, seed=0):
    """``specs`` (e.g. ``DemoDataset.eval_specs(data, split)[0]``) with the linear probe added to every set
    a probe set of ``data_root`` serves; the probe sets are written (or reused) under ``out``. Then
    ``compare(..., tasks=("zeroshot", "linear_probe"))`` reports both, and each BG-Gap pair gets a
    BG-Gap per task."""
    manifest = _manifest(data_root)
    folders = write_probe_sets(data_root, out, max_per_class, seed)
    names = {s.name for s in specs}
    for name, probe in probed_sets(manifest).items():
        if name in names:
            specs = attach_probe_train(specs, name, str(folders[probe]))
    return specs


def compare_args(data_root, out, split, max_per_class=MAX_PER_CLASS, seed=0):
    """The ``eval.compare`` arguments for one split's classification sets, with their probes and BG-Gap."""
    manifest = _manifest(data_root)
    folders = write_probe_sets(data_root, out, max_per_class, seed)
    args = []
    for name, probe in probed_sets(manifest).items():
        if manifest["eval_sets"][name]["split"] == split:
            args += ["--wds", f"{name}={Path(data_root).resolve() / manifest['eval_sets'][name]['path']}",
                     "--probe-train", f"{name}={folders[probe].resolve()}"]
    bg = manifest.get("bg_sets", {}).get(split, {})
    if "mixed_same" in bg and "mixed_rand" in bg:
        args += ["--bg-gap", f"emoji_bg_{split}={bg['mixed_same']},{bg['mixed_rand']}"]
    return args


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m xsample_openclip.eval.probe_sets",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a demo data folder (xsample_openclip.data.emoji/.shapes_data)")
    parser.add_argument("--out", required=True, help="where the probe training sets go (reused if up to date)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--max-per-class", type=int, default=MAX_PER_CLASS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        print(" ".join(compare_args(args.data, args.out, args.split, args.max_per_class, args.seed)))
    except ProbeSetError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
