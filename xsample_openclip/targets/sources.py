"""Training captions read the way OpenCLIP's loaders read them, for precompute and start-up checks.

``--train-data`` syntax (``::`` between sources, braces inside each), CSV columns as the plugin's CSV
loader reads them (bytes that are not UTF-8 become U+FFFD; an empty cell is the text "nan") and
webdataset members that OpenCLIP's pipeline takes as captions (``is_caption_member``). Where OpenCLIP's
webdataset loader skips a sample with a warning (a ``.txt`` that is not valid UTF-8) or the rest of a
shard (not a readable tar, or truncated), the reader skips it too and counts it in ``ReadReport``, so a
table holds every caption training will see. Captions of samples OpenCLIP drops for image reasons (no
image member, an image that does not decode) are kept: a table may hold a few captions more, never fewer.
"""
import hashlib
import logging
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List

from .decode import clean_caption_text

READ_CHUNK = 4096

#: webdataset's ``base_plus_ext``: a member's sample key, and its extensions after the name's first dot.
_WDS_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
#: webdataset's ``skip_meta``: ``__name__`` members are never sample parts.
_WDS_META = re.compile(r"__[^/]*__($|/)")


def expand_sources(train_data: str) -> List[str]:
    """OpenCLIP's ``--train-data`` syntax: ``::`` between sources, braces inside each."""
    import braceexpand

    return [p for src in train_data.split("::") for p in braceexpand.braceexpand(src)]


def sources_digest(sources: List[str]) -> str:
    """Short fingerprint of a source list: shard jobs of one --train-data agree on it, so a merge can
    tell shards built from other data apart."""
    return hashlib.sha256("\n".join(sources).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def source_kind(source, dataset_type="auto"):
    if dataset_type in (None, "auto"):
        return {"csv": "csv", "tsv": "csv", "tar": "webdataset"}.get(source.rsplit(".", 1)[-1])
    return dataset_type


@dataclass
class ReadReport:
    """What a read skipped, as OpenCLIP's loader would have."""

    captions: int = 0
    skipped_not_utf8: int = 0
    unreadable_sources: List[str] = field(default_factory=list)

    def meta(self) -> dict:
        """The read as a table's meta.json records it (so a merge can sum the shards' reads)."""
        return {"captions_read": self.captions, "skipped_not_utf8": self.skipped_not_utf8,
                "unreadable_sources": list(self.unreadable_sources)}

    @classmethod
    def from_meta(cls, meta: dict) -> "ReadReport":
        """The read a table's meta.json recorded (tables from before these fields: captions only)."""
        return cls(int(meta.get("captions_read", 0)), int(meta.get("skipped_not_utf8", 0)),
                   list(meta.get("unreadable_sources", [])))

    @classmethod
    def combined(cls, reports) -> "ReadReport":
        """One report for reads split over several processes or shard jobs."""
        reports = list(reports)
        return cls(sum(r.captions for r in reports), sum(r.skipped_not_utf8 for r in reports),
                   [s for r in reports for s in r.unreadable_sources])

    def summary(self) -> str:
        parts = [f"{self.captions} captions read"]
        if self.skipped_not_utf8:
            parts.append(f"{self.skipped_not_utf8} webdataset .txt member(s) skipped: not valid UTF-8 "
                         "(OpenCLIP's loader skips these samples too)")
        if self.unreadable_sources:
            parts.append(f"{len(self.unreadable_sources)} source(s) unreadable and skipped "
                         f"(OpenCLIP's loader skips them too), e.g. {self.unreadable_sources[0]}")
        return "; ".join(parts)


def is_caption_member(name: str) -> bool:
    """Whether OpenCLIP's webdataset pipeline takes this tar member as its sample's caption: not a
    ``__meta__`` member, and its extensions (all after the file name's first dot, lowercased, as
    webdataset groups them) are exactly ``txt`` ("0001.TXT" is a caption, "0001.en.txt" is not)."""
    if _WDS_META.match(name):
        return False
    match = _WDS_MEMBER.match(name)
    return bool(match) and match.group(2).lower() == "txt"


def iter_source(source, kind, caption_key="title", separator="\t", report=None, seekable=False) -> Iterator[str]:
    """One source's captions as OpenCLIP's loader hands them to the tokenizer.

    ``seekable``: open a local tar for random access, so members that are not captions (images) are
    skipped by seeking past them instead of being read through, as a stream must. (A shard truncated
    inside an image then ends quietly at the cut, where the stream reports it unreadable.)"""
    report = report if report is not None else ReadReport()
    if kind == "csv":
        import pandas as pd

        for chunk in pd.read_csv(source, sep=separator, usecols=[caption_key], chunksize=READ_CHUNK,
                                 encoding_errors="surrogateescape"):
            for caption in chunk[caption_key]:
                report.captions += 1
                yield str(clean_caption_text(caption))
    elif kind == "webdataset":
        try:
            with tarfile.open(source, "r:*" if seekable else "r|*") as tar:
                for member in tar:
                    if not (member.isfile() and is_caption_member(member.name)):
                        continue
                    try:
                        text = tar.extractfile(member).read().decode("utf-8")
                    except UnicodeDecodeError:
                        report.skipped_not_utf8 += 1
                        logging.warning(f"{source}: {member.name} is not valid UTF-8; skipped, as OpenCLIP's "
                                        "loader skips that sample")
                        continue
                    report.captions += 1
                    yield text
        except (tarfile.TarError, OSError, EOFError) as err:
            report.unreadable_sources.append(source)
            logging.warning(f"{source}: unreadable ({err}); skipped, as OpenCLIP's loader skips it")
    else:
        raise ValueError(f"cannot tell the dataset type of {source!r}; pass --dataset-type csv|webdataset")


def iter_captions(train_data, dataset_type="auto", caption_key="title", separator="\t",
                  report=None, sources=None) -> Iterator[str]:
    """Every caption of ``--train-data`` (or of the given ``sources`` of it), source after source, streamed."""
    for source in (expand_sources(train_data) if sources is None else sources):
        yield from iter_source(source, source_kind(source, dataset_type), caption_key, separator, report)


def _spread(n):
    """0..n-1 in an order that covers the range evenly early on (0, n/2, n/4, 3n/4, ...)."""
    seen, order, step = set(), [], 1
    while len(order) < n:
        for i in range(step):
            j = (i * n) // step
            if j not in seen:
                seen.add(j)
                order.append(j)
        step *= 2
    return order


def sample_captions(train_data, limit, dataset_type="auto", caption_key="title", separator="\t",
                    per_source=256):
    """Up to ``limit`` captions from the local sources of ``--train-data``.

    Sources are visited spread over the list (first, middle, quarters, ...), at most
    ``max(per_source, limit / sources)`` captions from each, so a sample sees many shards without
    opening all of them. Remote or missing sources are counted, not read. Returns ``(captions, info)``.
    """
    sources = expand_sources(train_data)
    local = [s for s in sources if Path(s).is_file()]
    report = ReadReport()
    info = {"sources": len(sources), "remote_or_missing": len(sources) - len(local), "sources_read": 0,
            "report": report}
    captions = []
    quota = max(per_source, -(-limit // max(len(local), 1)))
    for i in _spread(len(local)):
        if len(captions) >= limit:
            break
        source = local[i]
        info["sources_read"] += 1
        want = min(quota, limit - len(captions))
        try:
            for k, caption in enumerate(iter_source(source, source_kind(source, dataset_type), caption_key,
                                                    separator, report)):
                if k >= want:
                    break
                captions.append(caption)
        except (ValueError, KeyError) as err:
            logging.warning(f"could not read captions of {source}: {err}")
            report.unreadable_sources.append(source)
    return captions, info
