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
members, seeking past every image (no image is read or decoded). All sources are read when there are at
most ``max_sources`` of them; beyond that, a seeded sample of ``max_sources`` sources is read in full (a
two-stage sample: uniform over rows when sources hold similar numbers of rows, as webdataset shards do).

Where: a source on this file system is read directly; a webdataset source named by a URL (``pipe:``,
``http(s)://``, ``gs://``, ...) is streamed through webdataset's gopen, as OpenCLIP's loader streams it,
image members included (a stream cannot seek), so streamed shards cost their full download. The same
shards give the same sample either way: sources are taken in ``--train-data`` order, local and streamed
alike, and a shard's captions are the same bytes. The streamed part of a read must end within
``READ_SECONDS`` of its start, and a streamed source that fails or runs out of time stops the read with
``StreamError``: the sample is never quietly smaller. A local path that does not exist is counted, not
read (OpenCLIP's loader skips it too).

``calibration_sample`` is the one entry point: the sample ``--xsample-tau-s auto`` (and
``--xsample-graph-centre``) draws for a run's arguments, from ``--xsample-calibration-data`` when given,
or the refusal that names the ways out.
"""
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from .sources import ReadReport, StreamError, expand_sources, iter_source, source_kind, streamed

#: Captions sampled (uniformly, seeded by --seed) to calibrate ``--xsample-tau-s auto``.
CALIBRATION_CAPTIONS = 2048
#: The most sources read for one sample (all of them up to this; a seeded sample of this many beyond).
MAX_SOURCES = 64
#: The longest a start-up read of streamed sources may take, in seconds. Rank 0 reads while every other
#: rank waits in a collective (NCCL's default timeout: 10 minutes); a read that needs longer refuses with
#: the ways out instead.
READ_SECONDS = 300
_CHUNK = 4096
#: The flags that avoid reading the training data at start-up, named by every refusal of a read.
WAYS_OUT = ("pass a number instead (e.g. --xsample-tau-s 0.1), or calibrate on a local copy of captions like "
            "these with --xsample-calibration-data PATH (a CSV or webdataset shards, in --train-data syntax)")
#: The same where only --xsample-graph-centre needs the sample (tau_s is a number).
WAY_OUT_GRAPH = ("give a local copy of captions like these with --xsample-calibration-data PATH (a CSV or "
                 "webdataset shards, in --train-data syntax)")


@dataclass
class CaptionSample:
    """A sample and what it was drawn from."""

    captions: List[str]
    seed: int
    population: int           # captions read from the sources read (the sample is uniform over these)
    sources: int              # sources in the data's expansion
    sources_read: int
    local_sources: int        # sources found: local files and streamed URLs (the others are missing)
    report: ReadReport
    streamed_read: int = 0    # of the sources read, those streamed through webdataset's gopen
    origin: Optional[str] = None  # the flag and value the sample was drawn from, when not --train-data

    def describe(self) -> str:
        """One line for the log: how many captions from how many, and which sources were read."""
        where = "local source(s)" if not self.streamed_read else "source(s)"
        read = (f"all {self.sources_read} source(s)" if self.sources_read == self.local_sources
                else f"a seeded sample of {self.sources_read} of {self.local_sources} {where}, each read in full")
        text = (f"{len(self.captions)} captions sampled uniformly (seed {self.seed}) from {self.population} "
                f"captions of {read}")
        if self.streamed_read:
            text += f" ({self.streamed_read} streamed through webdataset's gopen)"
        if self.sources > self.local_sources:
            text += f"; {self.sources - self.local_sources} missing source(s) not read"
        if self.origin:
            text += f"; from {self.origin}"
        return text


def calibration_sample(args, k=CALIBRATION_CAPTIONS) -> CaptionSample:
    """The captions ``--xsample-tau-s auto`` calibrates on for a run's arguments (``train_data``, ``seed``,
    ``dataset_type``, ``csv_caption_key``, ``csv_separator``, ``xsample_calibration_data``): drawn from
    ``--xsample-calibration-data`` when given, else from ``--train-data``. Raises ``CalibrationDataError``
    with the refusal (naming the ways out) when fewer than 2 captions can be read."""
    data = getattr(args, "xsample_calibration_data", None)
    auto = getattr(args, "xsample_tau_s", "auto") == "auto"
    if data:
        flag, value = "--xsample-calibration-data", data
        fix = "fix --xsample-calibration-data" + (", or pass a number instead (e.g. --xsample-tau-s 0.1)"
                                                  if auto else "")
    else:
        flag, value, fix = "--train-data", args.train_data, WAYS_OUT if auto else WAY_OUT_GRAPH
    if not value:
        raise CalibrationDataError(f"--xsample-tau-s auto needs training captions to calibrate on and there is no "
                                   f"{flag}; {fix}")
    try:
        dataset_type = _calibration_type(data, args.dataset_type) if data else args.dataset_type
        sample = sample_uniform(value, k, args.seed, dataset_type, args.csv_caption_key, args.csv_separator)
    except (ValueError, KeyError, OSError, StreamError) as err:
        raise CalibrationDataError(f"--xsample-tau-s auto could not read the training captions of {flag} {value}: "
                                   f"{err}; {fix}") from None
    if len(sample.captions) < 2:
        raise CalibrationDataError(
            f"--xsample-tau-s auto needs training captions to calibrate on, but fewer than 2 could be read from {flag} "
            f"{value} ({sample.describe()}; {sample.report.summary()}); {fix}")
    if data:
        sample.origin = f"--xsample-calibration-data {data}"
    return sample


class CalibrationDataError(Exception):
    """``--xsample-tau-s auto`` cannot read the captions it calibrates on; the message is the refusal."""


def _calibration_type(data, dataset_type):
    """--xsample-calibration-data's type: told by its sources' extensions, else --dataset-type's."""
    return "auto" if all(source_kind(s) for s in expand_sources(data)) else dataset_type


def sample_uniform(train_data, k, seed, dataset_type="auto", caption_key="title", separator="\t",
                   max_sources=MAX_SOURCES, read_seconds=READ_SECONDS) -> CaptionSample:
    """Up to ``k`` captions drawn uniformly (seeded) from the sources of ``--train-data`` that exist:
    local files, and webdataset URLs streamed through webdataset's gopen, whose read must end within
    ``read_seconds``. Raises ``StreamError`` for a streamed source that cannot be read in full, and
    for a CSV named by a URL (read from this file system only)."""
    if k < 1 or max_sources < 1:
        raise ValueError(f"need k >= 1 and max_sources >= 1, got {k} and {max_sources}")
    sources = expand_sources(train_data)
    found = [s for s in sources if Path(s).is_file() or streamed(s)]
    n_found = len(found)
    rng = np.random.default_rng(seed)
    if n_found > max_sources:
        found = [found[i] for i in sorted(rng.choice(len(found), size=max_sources, replace=False))]
    kinds = [source_kind(s, dataset_type) for s in found]
    for source, kind in zip(found, kinds):
        if kind == "csv" and streamed(source):
            raise StreamError(f"{source}: a CSV named by a URL; captions are read from CSV files on this file "
                              "system only (OpenCLIP's CSV loader reads one file, with pandas)")
    deadline = time.monotonic() + read_seconds
    report = ReadReport()
    keys, kept = np.empty(0), []
    for source, kind in zip(found, kinds):
        stream = iter_source(source, kind, caption_key, separator, report, seekable=True, deadline=deadline)
        while chunk := list(itertools.islice(stream, _CHUNK)):
            keys, kept = _keep_smallest(np.concatenate([keys, rng.random(len(chunk))]), kept + chunk, k)
    order = np.argsort(keys, kind="stable")
    return CaptionSample([kept[i] for i in order], seed, report.captions, len(sources), len(found), n_found,
                         report, sum(map(streamed, found)))


def _keep_smallest(keys, items, k):
    """The ``k`` items with the smallest keys (all of them when there are at most ``k``)."""
    if len(items) <= k:
        return keys, items
    idx = np.argpartition(keys, k - 1)[:k]
    return keys[idx], [items[i] for i in idx]
