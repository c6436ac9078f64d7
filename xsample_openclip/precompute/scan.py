"""The scan: captions to token keys and the texts of their distinct keys, in chunks (optionally in
worker processes), spilled to disk so texts never accumulate in memory."""
import multiprocessing
import shutil
from collections import deque
from pathlib import Path
from typing import Iterator, List

import numpy as np

from ..progress import progress_bar
from ..targets.decode import TokenDecoder
from ..targets.keys import token_keys
from ..targets.sources import READ_CHUNK
from . import common

def _chunks(captions: Iterator[str], size=READ_CHUNK):
    captions = iter(captions)
    while True:
        chunk = [c for _, c in zip(range(size), captions)]
        if not chunk:
            return
        yield chunk


# --- the scan: chunks of captions -> keys (and the texts of each chunk's distinct keys) ----------

_WORKER_TOKENIZER = None


def _init_worker(tokenizer):
    global _WORKER_TOKENIZER
    import torch

    torch.set_num_threads(1)
    _WORKER_TOKENIZER = tokenizer


def _key_chunk(chunk, tokenizer=None, decode=True):
    """(keys of every caption, {key: decoded text} of the chunk's distinct keys or None)."""
    tokenizer = tokenizer or _WORKER_TOKENIZER
    tokens = tokenizer(chunk)
    keys = token_keys(tokens)
    if not decode:
        return keys, None
    _, first = np.unique(keys, return_index=True)
    first.sort()
    texts = TokenDecoder(tokenizer)(tokens[first])
    return keys, dict(zip(keys[first].tolist(), texts))


def _map_chunks(captions, tokenizer, decode, workers):
    """Yields ``_key_chunk`` results in order; with workers, at most 2 chunks per worker in flight."""
    if workers <= 1:
        for chunk in _chunks(captions):
            yield len(chunk), _key_chunk(chunk, tokenizer, decode)
        return
    # fork where there is one: workers only tokenize (CPU, one thread), and start in milliseconds
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        pending = deque()
        for chunk in _chunks(captions):
            pending.append((len(chunk), pool.apply_async(_key_chunk, (chunk, None, decode))))
            if len(pending) >= 2 * workers:
                n, res = pending.popleft()
                yield n, res.get()
        while pending:
            n, res = pending.popleft()
            yield n, res.get()


class CaptionScan:
    """Distinct captions of a stream, spilled to disk: sorted unique keys and their texts on demand."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.total = 0
        self.keys = None          # sorted unique uint64 keys
        self._record = None       # for each unique key, the index of its first (key, text) record
        self._offsets = None
        self._texts = None

    @classmethod
    def run(cls, captions, tokenizer, folder, workers=0, desc="scanning captions"):
        scan = cls(folder)
        if scan.folder.exists():
            shutil.rmtree(scan.folder)
        scan.folder.mkdir(parents=True)
        offset = 0
        with open(scan.folder / "keys.u64", "wb") as fk, open(scan.folder / "offsets.u64", "wb") as fo, \
                open(scan.folder / "texts.txt", "wb") as ft, \
                progress_bar(desc=desc, unit=" captions", unit_scale=True, mininterval=1.0,
                             disable=not common.PROGRESS_BARS) as bar:
            for n, (_, texts) in _map_chunks(captions, tokenizer, True, workers):
                data = [t.encode("utf-8") + b"\n" for t in texts.values()]
                lengths = np.fromiter((len(d) for d in data), dtype=np.uint64, count=len(data))
                starts = offset + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64)
                np.fromiter(texts.keys(), dtype=np.uint64, count=len(texts)).tofile(fk)
                starts.tofile(fo)
                ft.write(b"".join(data))
                offset += int(lengths.sum())
                scan.total += n
                bar.update(n)
        records = np.fromfile(scan.folder / "keys.u64", dtype=np.uint64)
        scan.keys, scan._record = np.unique(records, return_index=True)
        del records
        scan._offsets = np.memmap(scan.folder / "offsets.u64", dtype=np.uint64, mode="r") \
            if scan._record.size else np.zeros(0, np.uint64)
        scan._texts = np.memmap(scan.folder / "texts.txt", dtype=np.uint8, mode="r") if offset else b""
        return scan

    def __len__(self):
        return int(self.keys.size)

    def texts(self, start, stop) -> List[str]:
        """Texts of the distinct captions ``keys[start:stop]``."""
        records = self._record[start:stop]
        begins = self._offsets[records].astype(np.int64)
        nxt = records + 1                    # a record's text ends where the next record's begins
        ends = np.full(len(records), len(self._texts), dtype=np.int64)
        inside = nxt < len(self._offsets)
        ends[inside] = self._offsets[nxt[inside]].astype(np.int64)
        ends -= 1                            # drop the record's "\n"
        return [bytes(self._texts[b:e]).decode("utf-8") for b, e in zip(begins.tolist(), ends.tolist())]

    def remove(self):
        self._offsets = self._texts = None
        shutil.rmtree(self.folder, ignore_errors=True)


def unique_captions(captions: Iterator[str], tokenizer, desc="reading captions"):
    """Key -> decoded text of every distinct caption, and how many captions were read (in memory:
    for small sets only; ``CaptionScan`` is the bounded-memory version ``build_table`` uses)."""
    found, total = {}, 0
    for n, (_, texts) in _map_chunks(captions, tokenizer, True, 0):
        for k, text in texts.items():
            found.setdefault(k, text)
        total += n
    return found, total
