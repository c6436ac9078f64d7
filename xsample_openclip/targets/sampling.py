"""A uniform, seeded sample of a data set's captions: what ``--xsample-tau-s auto`` calibrates on.

Why: a data set's first rows are not a sample of it. A CSV or a shard sorted by topic, source or class
starts with one kind of caption, and a tau_s calibrated there fits that kind only (in
tests/test_calibration_sample.py, a CSV of 4 topics sorted by topic gives 0.0956 from its first 2,048
rows against 0.1139 from uniform samples of 2,048). The sample here is taken over the whole data set,
and the same seed over the same data gives the same sample.

How: bottom-k sampling. Every caption read draws an independent uniform key from a generator seeded
with ``seed``; the ``k`` captions with the smallest keys are a uniform sample without replacement of
all captions read, whatever their order, in one pass that holds only ``k`` captions. Reading is cheap:
a CSV's caption column alone (pandas ``usecols``); a webdataset shard's tar headers and ``.txt``
members, seeking past every image (no image is read or decoded). All local sources are read when
there are at most ``max_sources`` of them; beyond that, a seeded sample of ``max_sources`` sources is
read in full (a two-stage sample: uniform over rows when sources hold similar numbers of rows, as
webdataset shards do). Remote or missing sources are counted, not read.
"""
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np

from .sources import ReadReport, expand_sources, iter_source, source_kind

#: The most sources read for one sample (all of them up to this; a seeded sample of this many beyond).
MAX_SOURCES = 64
_CHUNK = 4096


@dataclass
class CaptionSample:
    """A sample and what it was drawn from."""

    captions: List[str]
    seed: int
    population: int           # captions read from the sources read (the sample is uniform over these)
    sources: int              # sources in --train-data
    sources_read: int
    local_sources: int        # sources on this file system (the others are remote or missing)
    report: ReadReport

    def describe(self) -> str:
        """One line for the log: how many captions from how many, and which sources were read."""
        read = (f"all {self.sources_read} source(s)" if self.sources_read == self.local_sources
                else f"a seeded sample of {self.sources_read} of {self.local_sources} local source(s), each "
                     "read in full")
        text = (f"{len(self.captions)} captions sampled uniformly (seed {self.seed}) from {self.population} "
                f"captions of {read}")
        if self.sources > self.local_sources:
            text += f"; {self.sources - self.local_sources} remote or missing source(s) not read"
        return text


def sample_uniform(train_data, k, seed, dataset_type="auto", caption_key="title", separator="\t",
                   max_sources=MAX_SOURCES) -> CaptionSample:
    """Up to ``k`` captions drawn uniformly (seeded) from the local sources of ``--train-data``."""
    if k < 1 or max_sources < 1:
        raise ValueError(f"need k >= 1 and max_sources >= 1, got {k} and {max_sources}")
    sources = expand_sources(train_data)
    local = [s for s in sources if Path(s).is_file()]
    n_local = len(local)
    rng = np.random.default_rng(seed)
    if n_local > max_sources:
        local = [local[i] for i in sorted(rng.choice(len(local), size=max_sources, replace=False))]
    report = ReadReport()
    keys, kept = np.empty(0), []
    for source in local:
        stream = iter_source(source, source_kind(source, dataset_type), caption_key, separator, report,
                             seekable=True)
        while chunk := list(itertools.islice(stream, _CHUNK)):
            keys, kept = _keep_smallest(np.concatenate([keys, rng.random(len(chunk))]), kept + chunk, k)
    order = np.argsort(keys, kind="stable")
    return CaptionSample([kept[i] for i in order], seed, report.captions, len(sources), len(local), n_local,
                         report)


def _keep_smallest(keys, items, k):
    """The ``k`` items with the smallest keys (all of them when there are at most ``k``)."""
    if len(items) <= k:
        return keys, items
    idx = np.argpartition(keys, k - 1)[:k]
    return keys[idx], [items[i] for i in idx]
