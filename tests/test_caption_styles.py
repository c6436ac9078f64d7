"""``shapes_data --caption-style``: the captions are as designed, and the images are the same in every style."""
import csv
from dataclasses import asdict

import pytest

from xsample_openclip.data import shapes
from xsample_openclip.data.shapes_data import ShapesParams, build_shapes_data, cache_params

SMALL = dict(image_size=16, train_images=40, eval_images=8)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    return {style: build_shapes_data(root / style, seed=0, caption_style=style, **SMALL)
            for style in shapes.CAPTION_STYLES}


def rows(data):
    with open(data.train_csv, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def pair_captions(row):
    return {t.format(colour=row["colour"], shape=row["shape"]) for t in
            ("a {colour} {shape}", "a drawing of a {colour} {shape}", "a {shape} in {colour}")}


def full_captions(row):
    return {t.format(**{k: row[k] for k in ("size", "colour", "shape", "place", "background")})
            for t in shapes.CAPTION_TEMPLATES}


def test_same_images_and_attributes_in_every_style(built):
    full = rows(built["full"])
    for style in ("pair", "mixed"):
        other = rows(built[style])
        assert [{k: v for k, v in r.items() if k not in ("filepath", "title")} for r in other] == \
               [{k: v for k, v in r.items() if k not in ("filepath", "title")} for r in full]
        for a, b in zip(full, other):
            with open(a["filepath"], "rb") as fa, open(b["filepath"], "rb") as fb:
                assert fa.read() == fb.read()


def test_captions_are_as_designed(built):
    full, pair, mixed = (rows(built[s]) for s in shapes.CAPTION_STYLES)
    assert all(r["title"] in full_captions(r) for r in full)
    assert all(r["title"] in pair_captions(r) for r in pair)
    # the phrasing (template index) is the image's own in every style
    for f, p in zip(full, pair):
        i = [t.format(**{k: f[k] for k in ("size", "colour", "shape", "place", "background")})
             for t in shapes.CAPTION_TEMPLATES].index(f["title"])
        assert p["title"] == shapes.PAIR_TEMPLATES[i].format(colour=f["colour"], shape=f["shape"])
    short = [r["title"] in pair_captions(r) for r in mixed]
    assert all(s or r["title"] in full_captions(r) for s, r in zip(short, mixed))
    assert 0.25 < sum(short) / len(short) < 0.75          # both kinds, about half each
    for s, m, f, p in zip(short, mixed, full, pair):
        assert m["title"] == (p["title"] if s else f["title"])


def test_default_style_keeps_its_cache_key_and_bad_styles_are_refused(tmp_path):
    params = ShapesParams()
    key = cache_params(params)
    assert "caption_style" not in key and key == {k: v for k, v in asdict(params).items() if k != "caption_style"}
    assert cache_params(ShapesParams(caption_style="mixed"))["caption_style"] == "mixed"
    with pytest.raises(ValueError, match="caption_style must be one of"):
        build_shapes_data(tmp_path / "x", caption_style="short")


def test_the_demo_trains_on_each_caption_style_as_a_shapes_data_variant(tmp_path, capsys):
    """``--dataset shapes --data-variant pair|mixed`` builds that style (its own folder, same images);
    a style is refused for emoji and an emoji variant for shapes, before anything is built."""
    from xsample_openclip.demo.cli import parse_args
    from xsample_openclip.demo.datasets import DATASETS, data_folder

    shapes_set = DATASETS["shapes"]
    assert parse_args(["--out", "x", "--dataset", "shapes", "--data-variant", "mixed"]).data_variant == "mixed"
    for argv in (["--dataset", "shapes", "--data-variant", "decorrelated"], ["--data-variant", "pair"]):
        with pytest.raises(SystemExit):
            parse_args(["--out", "x", *argv])
        assert "--data-variant for" in capsys.readouterr().err
    folders = {v: data_folder(tmp_path, shapes_set, v, 0, 32) for v in ("default", "pair")}
    assert folders["default"] != folders["pair"]
    pair = rows(shapes_set.build(folders["pair"], 0, 32, "pair"))
    assert len(pair) == ShapesParams().train_images and all(r["title"] in pair_captions(r) for r in pair)
