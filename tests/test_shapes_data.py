"""The attribute-heavy demo data: every caption names all five attributes, the held-out colour-shape
pairs never occur in training, validation and test hold different unseen pairs, and each zero-shot
set labels the same images by colour, shape and pair as clip_benchmark reads them."""
import csv
import json
import tarfile
from pathlib import Path

import pytest

from xsample_openclip.data import shapes
from xsample_openclip.data.shapes_data import build_shapes_data

SMALL = dict(image_size=32, train_images=96, eval_images=24)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_shapes_data(tmp_path_factory.mktemp("shapes") / "d", seed=0, **SMALL)


def rows(data):
    with open(data.train_csv, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_captions_name_all_five_attributes(data):
    for row in rows(data):
        words = row["title"]
        for attribute in ("colour", "shape", "size", "place", "background"):
            assert row[attribute] in words, (attribute, row)


def test_unseen_pairs_never_train_and_splits_are_disjoint(data):
    val, test = shapes.held_out_pairs(0)
    assert len(val) == len(test) == 6 and not set(val) & set(test)
    trained = {(r["colour"], r["shape"]) for r in rows(data)}
    assert not trained & (set(val) | set(test))
    assert {s for _, s in val} == {s for _, s in test} == set(shapes.SHAPES)  # every shape in both splits


@pytest.mark.parametrize("split", ["val", "test"])
def test_each_split_labels_its_unseen_pairs_three_ways(data, split):
    from clip_benchmark.datasets.builder import build_dataset

    pairs = shapes.held_out_pairs(0)[0 if split == "val" else 1]
    labels = {}
    for task in ("colour", "shape", "pair"):
        name = f"shapes_{task}_{split}"
        assert name in data.splits[split]
        dataset = build_dataset(f"wds/{name}", root=str(data.eval_sets[name]), transform=lambda im: im,
                                split="test", task="zeroshot_classification")
        labels[task] = [int(t) for _, t in dataset]
        classes = dataset.classes
        assert len(labels[task]) == SMALL["eval_images"]
    pair_names = shapes.pair_classes()
    for colour, shape, pair in zip(labels["colour"], labels["shape"], labels["pair"]):
        c, s = list(shapes.COLOURS)[colour], shapes.SHAPES[shape]
        assert pair_names[pair] == f"{c} {s}" and (c, s) in pairs
    assert classes == pair_names


def test_same_seed_same_bytes(data, tmp_path):
    again = build_shapes_data(tmp_path / "again", seed=0, **SMALL)
    for name in data.eval_sets:
        a = tarfile.open(data.eval_sets[name] / "test" / "0.tar")
        b = tarfile.open(again.eval_sets[name] / "test" / "0.tar")
        assert [a.extractfile(m).read() for m in a] == [b.extractfile(m).read() for m in b]


def test_a_larger_evaluation_set_leaves_the_training_bytes_alone(data, tmp_path):
    bigger = build_shapes_data(tmp_path / "bigger", seed=0, **{**SMALL, "eval_images": 4 * SMALL["eval_images"]})
    train = lambda d: [(r["filepath"].rsplit("/", 1)[-1], r["title"]) for r in rows(d)]  # noqa: E731
    assert train(bigger) == train(data)
    for r_small, r_big in zip(rows(data), rows(bigger)):
        assert Path(r_small["filepath"]).read_bytes() == Path(r_big["filepath"]).read_bytes()
    manifest = json.loads(bigger.manifest_path.read_text())
    assert all(entry["num_samples"] == 4 * SMALL["eval_images"] for entry in manifest["eval_sets"].values())


def test_the_demo_flag_scales_the_held_out_sets_of_both_builders(monkeypatch, tmp_path, capsys):
    import xsample_openclip.data as data_package
    from xsample_openclip.data import shapes_data
    from xsample_openclip.demo import datasets
    from xsample_openclip.demo.cli import parse_args

    assert parse_args(["--out", "x", "--eval-scale", "4"]).eval_scale == 4
    assert parse_args(["--out", "x"]).eval_scale == 1
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--eval-scale", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err
    assert datasets.data_folder(tmp_path, datasets.SHAPES, "pair", 0, 32, 4).name == "shapes-pair-eval4x-seed0-32px"
    assert datasets.data_folder(tmp_path, datasets.SHAPES, "pair", 0, 32).name == "shapes-pair-seed0-32px"
    seen = {}
    monkeypatch.setattr(data_package, "build_demo_data", lambda folder, **kw: seen.setdefault("emoji", kw))
    monkeypatch.setattr(shapes_data, "build_shapes_data", lambda folder, **kw: seen.setdefault("shapes", kw))
    datasets.EMOJI.build(tmp_path, 0, 32, "default", 4)
    datasets.SHAPES.build(tmp_path, 0, 32, "pair", 4)
    assert seen["emoji"]["cls_images_per_class"] == 240 and seen["emoji"]["bg_images_per_class"] == 120  # 60, 30 x 4
    assert seen["shapes"]["eval_images"] == 1440 and seen["shapes"]["caption_style"] == "pair"  # 360 x 4
