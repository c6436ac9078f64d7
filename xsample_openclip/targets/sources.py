"""Training captions read the way OpenCLIP's loaders read them, for precompute and start-up checks.

``--train-data`` syntax (``::`` between sources, braces inside each), CSV columns as the plugin's CSV
loader reads them (bytes that are not UTF-8 become U+FFFD; an empty cell is the text "nan") and
webdataset members that OpenCLIP's pipeline takes as captions (``is_caption_member``). Where OpenCLIP's
webdataset loader skips a sample with a warning (a ``.txt`` that is not valid UTF-8) or the rest of a
shard (not a readable tar, or truncated), the reader skips it too and counts it in ``ReadReport``, so a
table holds every caption training will see. Captions of samples OpenCLIP drops for image reasons (no
image member, an image that does not decode) are kept: a table may hold a few captions more, never fewer.

Sources are named as OpenCLIP's webdataset loader names them (webdataset's ``expand_urls``: ``::``,
``${VAR}`` from ``WDS_VAR``, braces). A source that is a file on this file system is read directly (a tar
by seeking past its images where asked). Any other source with a URL scheme (``pipe:``, ``http(s)://``,
``gs://``, ...) is streamed through webdataset's ``gopen``, the opener OpenCLIP's loader uses, so it reads
what training reads, with the commands and settings (``GOPEN_REWRITE``, ``USE_AIS_FOR``) training uses.
A stream that cannot be read in full (the opener has no handler for the scheme, its command exits with an
error, it passes the caller's deadline) raises ``StreamError`` naming the source: it is never skipped
quietly, since a sample or table missing a shard training will see is wrong without a word.
"""
import hashlib
import logging
import os
import re
import select
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional
from urllib.parse import urlparse

from .decode import clean_caption_text

READ_CHUNK = 4096

#: webdataset's ``base_plus_ext``: a member's sample key, and its extensions after the name's first dot.
_WDS_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
#: webdataset's ``skip_meta``: ``__name__`` members are never sample parts.
_WDS_META = re.compile(r"__[^/]*__($|/)")


def expand_sources(train_data: str) -> List[str]:
    """OpenCLIP's ``--train-data`` syntax, expanded by the function its webdataset loader expands it with
    (``webdataset.shardlists.expand_urls``): ``::`` between sources, ``${VAR}`` from the environment
    variable ``WDS_VAR``, braces inside each."""
    from webdataset.shardlists import expand_urls

    try:
        return expand_urls(train_data)
    except AssertionError as err:  # webdataset asserts that each ${VAR} has its WDS_VAR
        raise ValueError(f"{train_data!r}: {err}") from None


class StreamError(Exception):
    """A streamed source (a URL read through webdataset's gopen) that could not be read in full."""


def streamed(source: str) -> bool:
    """Whether ``source`` is read through webdataset's gopen: not a file here, and a URL scheme."""
    return not Path(source).is_file() and urlparse(source).scheme != ""


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


def iter_source(source, kind, caption_key="title", separator="\t", report=None, seekable=False,
                deadline: Optional[float] = None) -> Iterator[str]:
    """One source's captions as OpenCLIP's loader hands them to the tokenizer.

    ``seekable``: open a local tar for random access, so members that are not captions (images) are
    skipped by seeking past them instead of being read through, as a stream must. (A shard truncated
    inside an image then ends quietly at the cut, where the stream reports it unreadable.)
    ``deadline`` (``time.monotonic()``): a streamed webdataset source not read in full by then raises
    ``StreamError``; None waits as long as the stream takes."""
    report = report if report is not None else ReadReport()
    if kind == "csv":
        import pandas as pd

        for chunk in pd.read_csv(source, sep=separator, usecols=[caption_key], chunksize=READ_CHUNK,
                                 encoding_errors="surrogateescape"):
            for caption in chunk[caption_key]:
                report.captions += 1
                yield str(clean_caption_text(caption))
    elif kind == "webdataset" and streamed(source):
        yield from _streamed_tar_captions(source, report, deadline)
    elif kind == "webdataset":
        try:
            with tarfile.open(source, "r:*" if seekable else "r|*") as tar:
                yield from _tar_captions(tar, source, report)
        except (tarfile.TarError, OSError, EOFError) as err:
            _unreadable(source, err, report)
    else:
        raise ValueError(f"cannot tell the dataset type of {source!r}; pass --dataset-type csv|webdataset")


def _tar_captions(tar, source, report) -> Iterator[str]:
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


def _unreadable(source, err, report):
    report.unreadable_sources.append(source)
    logging.warning(f"{source}: unreadable ({err}); skipped, as OpenCLIP's loader skips it")


def _streamed_tar_captions(source, report, deadline) -> Iterator[str]:
    """A shard streamed through webdataset's gopen. The stream is read to its end and its opener's exit
    status checked, so a command that failed (curl's 404, a missing file behind ``pipe:cat``) raises
    ``StreamError``; a stream that arrived whole but is not a readable tar is skipped and counted, as a
    local file is. Stopping early (the caller breaks off) closes the stream without a check."""
    from webdataset.gopen import gopen

    try:
        stream = gopen(source, "rb")
    except (ValueError, OSError) as err:  # gopen: "no gopen handler defined" for an unknown scheme
        hint = (" (OpenCLIP's loader cannot open it either; stream it through a command, e.g. "
                "'pipe:aws s3 cp URL -')" if "no gopen handler" in str(err) else "")
        raise StreamError(f"{source}: webdataset's gopen, which OpenCLIP's loader opens shards with, cannot "
                          f"open it ({err}){hint}") from None
    reader, done = _BoundedReader(stream, source, deadline), False
    try:
        tar_error = None
        try:
            with tarfile.open(fileobj=reader, mode="r|*") as tar:
                yield from _tar_captions(tar, source, report)
        except (tarfile.TarError, EOFError) as err:
            tar_error = err
        except OSError as err:
            raise reader.failure(err) from None
        reader.finish()
        done = True
        if tar_error is not None:
            _unreadable(source, tar_error, report)
    finally:
        if not done:
            reader.abandon()


class _BoundedReader:
    """The file object tarfile reads a gopen stream through: reads end with ``StreamError`` at the
    deadline. A webdataset ``Pipe`` (every command gopen runs) is read from its pipe's descriptor after
    ``select`` says data is there, so a stalled command cannot hold the read past the deadline; any other
    stream (``file:``) is checked between reads."""

    def __init__(self, stream, source, deadline):
        from webdataset.gopen import Pipe

        self.stream, self.source, self.deadline = stream, source, deadline
        self.fd = stream.stream.fileno() if isinstance(stream, Pipe) else None

    def read(self, size=-1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        self._check_time()
        if self.fd is None:
            return self.stream.read(size)
        wait = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        if not select.select([self.fd], [], [], wait)[0]:
            self._expire()
        return os.read(self.fd, size)

    def _check_time(self):
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self._expire()

    def _expire(self):
        raise StreamError(f"{self.source}: not read in full within the time allowed for the read")

    def finish(self):
        """Read to the end (a tar's padding after its last member) and close; the opener's failure raises."""
        import subprocess

        try:
            while self.read(1 << 20):
                pass
            if self.deadline is not None and self.fd is not None:  # Pipe.close waits for its command
                self.stream.timeout = max(0.1, self.deadline - time.monotonic())
            self.stream.close()
        except subprocess.TimeoutExpired:
            self._expire()
        except OSError as err:
            raise self.failure(err) from None

    def failure(self, err) -> StreamError:
        proc = getattr(self.stream, "proc", None)
        if proc is not None and proc.poll() is not None:
            return StreamError(f"{self.source}: its command `{proc.args}` exited with status {proc.returncode}")
        return StreamError(f"{self.source}: the stream failed ({err})")

    def abandon(self):
        """Close without a check (the read stopped early, failed or ran out of time); end its command."""
        proc = getattr(self.stream, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
        try:
            self.stream.close()
        except OSError:  # the command's exit status after a kill says nothing
            pass


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
