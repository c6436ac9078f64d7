"""Which emoji the demo uses and where each goes: training, zero-shot test, or retrieval-only.

Concept emoji are split per (concept, subgroup) stratum, so every finer kind ("mammal", "bird") has held-out
members where it has at least two; emoji outside the concepts are split per subgroup for retrieval only.
Caps keep large subgroups (258 country flags) from dominating and make small test builds possible.
"""
from __future__ import annotations

from dataclasses import dataclass

from .catalog import Emoji
from .concepts import Concept, concept_index, other_noun
from .params import DemoParams
from .split import seeded_rng, split_stratum


@dataclass(frozen=True)
class Item:
    emoji: Emoji
    concept: Concept | None
    noun: str  # class name, or the readable subgroup noun for emoji outside the concepts
    fine_noun: str  # the subgroup's noun within a concept ("mammal" for "animal"); else the same as noun


def _capped(keys, cap, seed, stratum):
    keys = sorted(keys)
    if cap is None or len(keys) <= cap:
        return keys
    seeded_rng(seed, "cap", stratum).shuffle(keys)
    return sorted(keys[:cap])


def select_and_split(catalog: list[Emoji], params: DemoParams):
    """Returns (train items, concept test items, other retrieval items), each in a stable order."""
    members, excluded = concept_index(catalog)
    by_key = {e.key: e for e in catalog}
    strata: dict[str, list[str]] = {}
    for e in catalog:
        if e.key in excluded:
            continue
        stratum = f"concept:{members[e.key].name}:{e.subgroup}" if e.key in members else "other:" + e.subgroup
        strata.setdefault(stratum, []).append(e.key)
    train, test, retrieval = [], [], []
    for stratum, keys in sorted(strata.items()):
        is_concept = stratum.startswith("concept:")
        cap = params.max_concept_per_subgroup if is_concept else params.max_other_per_subgroup
        keys = _capped(keys, cap, params.seed, stratum)
        if is_concept:
            tr, te = split_stratum(keys, params.test_fraction, 1, 1, params.seed, stratum)
        else:
            tr, te = split_stratum(keys, params.retrieval_fraction, 0, 1, params.seed, stratum)
        for split_keys, out in ((tr, train), (te, test if is_concept else retrieval)):
            for key in split_keys:
                concept, subgroup = members.get(key), by_key[key].subgroup
                noun = concept.name if concept else other_noun(subgroup)
                fine = concept.fine_noun(subgroup) if concept else noun
                out.append(Item(by_key[key], concept, noun, fine))
    order = lambda item: item.emoji.order  # noqa: E731
    return sorted(train, key=order), sorted(test, key=order), sorted(retrieval, key=order)


def split_held_out(test_items, other_items, seed: int):
    """{"val": (concept items, other items), "test": (...)}: the held-out emoji halved, by emoji.

    Each concept's held-out emoji are shuffled with the seed and dealt alternately to validation and
    test (the first to test), so both splits test every concept and no emoji is in both; the
    retrieval-only emoji of other subgroups are dealt the same way per subgroup.
    """
    out = {"val": ([], []), "test": ([], [])}

    def deal(items, group_of, slot):
        groups = {}
        for item in items:
            groups.setdefault(group_of(item), []).append(item)
        for group, members in sorted(groups.items()):
            members = sorted(members, key=lambda it: it.emoji.key)
            seeded_rng(seed, "val-test", group).shuffle(members)
            for i, item in enumerate(members):
                out["test" if i % 2 == 0 else "val"][slot].append(item)

    deal(test_items, lambda it: it.concept.name, 0)
    deal(other_items, lambda it: it.emoji.subgroup, 1)
    order = lambda item: item.emoji.order  # noqa: E731
    return {split: (sorted(c, key=order), sorted(o, key=order)) for split, (c, o) in out.items()}
