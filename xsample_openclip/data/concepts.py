"""The zero-shot concepts (classes) and the habitat background that goes with each.

A concept is a readable class name ("animal", "vehicle") over several Unicode subgroups, minus members that
do not fit the name (a paw print is not an animal; a traffic light is not a vehicle). Excluded members are
dropped from the data entirely, so the class word is never attached to them. Each subgroup also has a finer
noun ("mammal", "bird", "fruit") that some captions use instead of the class name: a sentence encoder
knows that a mammal is an animal, a model trained from scratch has to learn it.

Each concept has a *habitat*: a two-colour gradient plus faded scenery emoji (mountains for animals, a
dining table for food, road signs for vehicles). In training, a concept's images sit mostly on its own habitat, so
the background is a spurious cue a model can learn, as in ImageNet-9; the background-robustness sets then
swap habitats to measure how much the model relies on it. Scenery emoji are never members of a concept.

Emoji outside every concept still train the model (they are most of the data); their captions use a
readable noun for their subgroup instead of a class name (``OTHER_NOUNS``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Habitat:
    place: str  # what the background depicts, for documentation
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]  # gradient top, bottom
    scenery: tuple[str, ...]  # emoji names scattered, faded, over the gradient


@dataclass(frozen=True)
class Concept:
    name: str  # the class name used in captions and zero-shot prompts
    subgroups: dict  # Unicode subgroup -> finer noun some captions use instead ("mammal" in "animal")
    exclude: tuple[str, ...]  # member names that do not fit the class name
    habitat: Habitat

    def fine_noun(self, subgroup: str) -> str:
        return self.subgroups[subgroup]


def _c(name, subgroups, exclude, place, top, bottom, scenery):
    subgroups = {sub: name for sub in subgroups} if isinstance(subgroups, list) else subgroups
    return Concept(name, subgroups, tuple(exclude), Habitat(place, (top, bottom), tuple(scenery)))


#: Ten broad concepts: broad enough that every class has dozens of members (low-data training still sees
#: several per batch) and a family look, yet semantic rather than a single shape or colour.
CONCEPTS: tuple[Concept, ...] = (
    _c("animal",
       {"animal-mammal": "mammal", "animal-bird": "bird", "animal-marine": "sea animal", "animal-bug": "bug",
        "animal-reptile": "reptile", "animal-amphibian": "amphibian"},
       ["paw prints", "pig nose", "feather", "wing", "spider web", "microbe"],
       "mountain meadow", (170, 214, 120), (96, 150, 60), ["national park", "mountain", "snow-capped mountain"]),
    _c("plant", {"plant-flower": "flower", "plant-other": "plant"},
       ["rosette", "empty nest", "nest with eggs", "mushroom"],
       "garden", (250, 200, 220), (235, 110, 155), ["droplet", "bucket", "black sun with rays"]),
    _c("food",
       {"food-fruit": "fruit", "food-vegetable": "vegetable", "food-prepared": "dish", "food-asian": "dish",
        "food-sweet": "dessert"},
       ["salt shaker", "honey pot"],
       "dining table", (225, 190, 150), (165, 120, 80), ["fork and knife with plate", "chopsticks", "spoon"]),
    _c("drink", ["drink"], ["ice cube"],
       "bar", (100, 70, 60), (50, 30, 28), ["ice cube", "izakaya lantern"]),
    _c("vehicle",
       {"transport-ground": "land vehicle", "transport-air": "aircraft", "transport-water": "boat"},
       ["station", "bus stop", "motorway", "railway track", "oil drum", "fuel pump", "wheel",
        "police cars revolving light", "horizontal traffic light", "vertical traffic light",
        "octagonal sign", "construction sign", "roller skate", "seat", "suspension railway",
        "mountain cableway", "aerial tramway", "anchor", "ring buoy"],
       "road", (190, 200, 205), (100, 120, 130), ["motorway", "vertical traffic light", "construction sign"]),
    _c("building", ["place-building"], ["brick", "rock", "wood", "wedding", "statue of liberty"],
       "sunny square", (255, 250, 205), (245, 230, 120), ["fountain", "bus stop", "sunrise"]),
    _c("clothing", ["clothing"],
       ["lipstick", "ring", "gem stone", "prayer beads", "folding hand fan", "hair pick"],
       "boutique", (230, 200, 240), (150, 115, 205), ["mirror", "spool of thread", "ball of yarn"]),
    _c("sports equipment", ["sport"], ["goal net", "flag in hole"],
       "court", (255, 190, 90), (225, 90, 10), ["trophy", "sports medal", "chequered flag"]),
    _c("musical instrument", ["musical-instrument"], [],
       "stage", (190, 35, 40), (80, 15, 20), ["musical note", "multiple musical notes", "musical score"]),
    _c("tool", ["tool"],
       ["dagger", "crossed swords", "bomb", "boomerang", "bow and arrow", "shield", "balance scale",
        "probing cane", "link symbol", "broken chain", "chains"],
       "workshop", (60, 90, 160), (25, 45, 100), ["wood", "brick"]),
)

#: Caption nouns for emoji outside every concept, by subgroup. None of them is a concept name.
OTHER_NOUNS = {
    "face-smiling": "smiley", "face-affection": "smiley", "face-tongue": "smiley", "face-hand": "smiley",
    "face-neutral-skeptical": "smiley", "face-sleepy": "smiley", "face-unwell": "smiley",
    "face-hat": "smiley", "face-glasses": "smiley", "face-concerned": "smiley", "face-negative": "smiley",
    "face-costume": "costume face", "cat-face": "cat face", "monkey-face": "monkey face",
    "heart": "heart", "emotion": "emotion symbol",
    "hand-fingers-open": "hand gesture", "hand-fingers-partial": "hand gesture",
    "hand-single-finger": "hand gesture", "hand-fingers-closed": "hand gesture", "hands": "hand gesture",
    "hand-prop": "hand gesture", "body-parts": "body part",
    "person": "person", "person-gesture": "person", "person-role": "person", "person-fantasy": "fantasy person",
    "person-activity": "person", "person-sport": "athlete", "person-resting": "person",
    "family": "family", "person-symbol": "person symbol",
    "food-marine": "seafood", "dishware": "kitchenware",
    "place-map": "map", "place-geographic": "landscape", "place-religious": "place of worship",
    "place-other": "place", "hotel": "hotel", "time": "clock", "sky & weather": "weather",
    "event": "celebration", "award-medal": "award", "game": "game", "arts & crafts": "craft",
    "sound": "sound symbol", "music": "music symbol", "phone": "phone", "computer": "computer",
    "light & video": "light and video", "book-paper": "paper", "money": "money", "mail": "mail",
    "writing": "writing", "office": "office supply", "lock": "lock", "medical": "medical item",
    "household": "household item", "other-object": "object", "science": "science item",
    "transport-sign": "sign", "warning": "warning sign", "arrow": "arrow", "religion": "religious symbol",
    "zodiac": "zodiac sign", "av-symbol": "symbol", "gender": "symbol", "math": "math symbol",
    "punctuation": "punctuation", "currency": "currency symbol", "other-symbol": "symbol",
    "keycap": "keycap", "geometric": "shape", "flag": "flag", "country-flag": "flag",
    "subdivision-flag": "flag",
}


def concept_index(emoji_list) -> tuple[dict[str, Concept], set[str]]:
    """Which concept each emoji belongs to (by key), and the keys excluded from the data."""
    by_subgroup = {sub: concept for concept in CONCEPTS for sub in concept.subgroups}
    members, excluded = {}, set()
    for e in emoji_list:
        concept = by_subgroup.get(e.subgroup)
        if concept is None:
            continue
        if e.name in concept.exclude:
            excluded.add(e.key)
        else:
            members[e.key] = concept
    return members, excluded


def other_noun(subgroup: str) -> str:
    return OTHER_NOUNS.get(subgroup, subgroup.replace("-", " "))
