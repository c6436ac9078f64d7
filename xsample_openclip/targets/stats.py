"""Counts of odd captions (empty, symbols only, cut at the context length, ...), logged once per epoch.

The embedders own a ``CaptionStats`` and the losses log it (``losses/common.py``) through the object alone
(``take``, ``describe``, a fresh one of its type), so the loss math needs no import of this layer.

Nothing is dropped or altered: an odd caption is embedded exactly as decoded (an empty one as the
encoder's embedding of "", which all empty captions share), so the counts say what the targets were
built from. Cheap: bit flags from the token ids (vectorised) and, on the online path, from the text
when a caption is first decoded (cached with its embedding).
"""
from typing import Dict

import numpy as np

from .decode import FLAG_NAMES


def describe_caption_stats(counts: Dict[str, int], context_length: int = 0, text_checked: bool = True) -> str:
    """One log line: how many captions were odd and what was done with them."""
    parts = []
    labels = (
        ("empty", "empty"),
        ("nan", "the text 'nan' (an empty CSV cell as OpenCLIP reads it)"),
        ("no_words", "punctuation/symbols/emoji only"),
        ("undecodable", "with undecodable bytes (U+FFFD)"),
        ("context_full", f"cut at the context length{f' ({context_length} tokens)' if context_length else ''}"),
        ("duplicates", "repeating a caption earlier in the same batch"),
        ("uniform_batches", "batch(es) of identical captions (uniform targets)"),
    )
    for name, label in labels:
        if counts.get(name):
            parts.append(f"{counts[name]} {label}")
    head = f"{counts.get('samples', 0)} captions in {counts.get('batches', 0)} batches"
    if not text_checked:
        head += " (precomputed table: text-level checks were not run)"
    if not parts:
        return f"{head}; none odd"
    return (f"{head}; odd: " + ", ".join(parts)
            + ". All kept and embedded as decoded; identical captions share one embedding")


class CaptionStats:
    """Per-epoch counts. With ``--accum-freq k`` OpenCLIP hands the loss the same concatenated batch k
    times per step; ``calls_per_batch = k`` makes only the first of those calls count."""

    FIELDS = ("samples", "batches") + tuple(name for name, _ in FLAG_NAMES) + ("duplicates", "uniform_batches")
    #: one log line for counts (``take``'s, or their sum over ranks): what the losses log each epoch
    describe = staticmethod(describe_caption_stats)

    def __init__(self):
        self.counts: Dict[str, int] = dict.fromkeys(self.FIELDS, 0)
        self.calls_per_batch = 1
        self._calls = 0

    def observe(self, keys: np.ndarray, flags: np.ndarray) -> None:
        call, self._calls = self._calls, self._calls + 1
        if call % max(1, self.calls_per_batch):
            return
        counts = self.counts
        counts["samples"] += len(keys)
        counts["batches"] += 1
        for name, bit in FLAG_NAMES:
            counts[name] += int(np.count_nonzero(flags & bit))
        distinct = len(np.unique(keys))
        counts["duplicates"] += len(keys) - distinct
        if len(keys) > 1 and distinct == 1:
            counts["uniform_batches"] += 1

    def take(self) -> Dict[str, int]:
        """The counts so far; starts counting afresh (at a batch boundary: call it between epochs)."""
        counts, self.counts = self.counts, dict.fromkeys(self.FIELDS, 0)
        self._calls = 0
        return counts
