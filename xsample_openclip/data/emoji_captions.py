"""Training captions, retrieval captions and zero-shot prompts.

Captions come at three levels of detail, as web captions do:
- the name alone ("a giraffe face"),
- the name and what kind of thing it is ("a giraffe face, a kind of animal", or with the finer noun of its
  subgroup, "a giraffe face, a kind of mammal"; share ``noun_rate``),
- only the kind ("a kind of animal"; share ``noun_only_rate``).
The zero-shot prompts reuse the last phrasing, but only held-out emoji are tested, so the model must
recognise a *new* emoji as an animal from what it learnt on other animals.

Why this suits X-Sample: its soft targets put mass on samples whose captions are similar for
all-MiniLM-L6-v2. Captions of one class share the class word, "mammal" and "bird" are close to "animal" for
the encoder, and even name-only captions relate ("giraffe face" and "dog face" are closer than "giraffe
face" and "taxi"), while CLIP's hard targets treat them all as negatives. Boilerplate such as "an emoji of ..." is avoided: shared by every class, it makes captions of
different classes look alike to the sentence encoder (measured: with it, the soft-target mass on other
classes equals that on the own class; without, it is about a quarter).
"""
from __future__ import annotations

import random

ZEROSHOT_TEMPLATES = ("a kind of {c}", "{c}")

_NAME_ONLY = ("{name}", "{a_name}")
_WITH_NOUN = ("{a_name}, a kind of {noun}", "{noun}: {name}")
_NOUN_ONLY = ("a kind of {noun}",)


def with_article(phrase: str) -> str:
    """'a dog', 'an owl'; names that already start with a determiner or are plural-looking keep as is."""
    first = phrase.split(" ", 1)[0]
    if first in ("a", "an", "the", "family:") or phrase.startswith(("two ", "kiss", "couple")):
        return phrase
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def train_caption(name: str, noun: str, rng: random.Random, noun_rate: float, noun_only_rate: float,
                  fine_noun: str | None = None) -> str:
    """One caption for one training image (see the module docstring for the three levels).

    With a ``fine_noun`` ("mammal" for the class "animal"), half of the name-and-kind captions use it instead
    of the class name; the kind-only captions always use the class name.
    """
    draw = rng.random()
    if draw < noun_only_rate:
        templates = _NOUN_ONLY
    elif draw < noun_only_rate + noun_rate:
        templates = _WITH_NOUN
        if fine_noun and fine_noun != noun and rng.random() < 0.5:
            noun = fine_noun
    else:
        templates = _NAME_ONLY
    return rng.choice(templates).format(name=name, a_name=with_article(name), noun=noun)


def retrieval_captions(name: str, noun: str) -> list[str]:
    """The two reference captions of a retrieval image (clip_benchmark reads one per line)."""
    return [with_article(name), f"{with_article(name)}, a kind of {noun}"]
