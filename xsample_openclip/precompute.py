"""Precompute the caption-embedding table for ``--xsample-embeddings``.

    python -m xsample_openclip.precompute --model MODEL --train-data DATA --out TABLE_DIR
    python -m xsample_openclip.precompute --model MODEL --train-data DATA --out TABLE_DIR --check

Captions are read exactly as OpenCLIP's loader reads them (CSV column or webdataset ``.txt``
members), tokenized with the model's own tokenizer, keyed by ``token_keys`` and decoded back, so the
table holds what the online encoder would compute: training with the table is training with the
online encoder, minus its cost.

Built for millions of captions, in two streamed passes:
1. scan: shards are read one after another in chunks, tokenized (``--workers`` processes), keyed and
   decoded; each chunk's distinct (key, text) records are appended to spill files in
   ``TABLE_DIR/scan/``. Memory stays bounded: texts never accumulate in RAM, only the 8-byte keys
   are sorted once at the end (``np.unique``, about 24 bytes per caption read at that moment).
2. embed: distinct captions, in key order, are encoded in batches into a memory-mapped
   ``embeddings.npy`` whose size is logged before the first batch; a progress bar shows rate and
   ETA; progress is saved after every batch, so an interrupted run resumes where it stopped (the scan
   is redone to make sure the data did not change). ``meta.json`` is written last.
``--check`` streams the data again and reports how many captions (and distinct captions) are missing
from a finished table; it exits 1 when any are.
"""
import argparse
import json
import logging
import multiprocessing
import shutil
import sys
import time
from collections import deque
from pathlib import Path
from typing import Iterator, List

import numpy as np
from tqdm import tqdm

from .targets.decode import TokenDecoder
from .targets.keys import token_keys
from .targets.sources import READ_CHUNK, ReadReport, iter_captions
from .targets.table import EMBEDDINGS, KEYS, EmbeddingTable, table_meta, write_meta

PROGRESS = "progress.json"
SCAN_DIR = "scan"
#: Progress bars (rate and ETA) on stderr; ``xsample_openclip.bench`` turns them off.
PROGRESS_BARS = True


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
                tqdm(desc=desc, unit=" captions", unit_scale=True, mininterval=1.0, disable=not PROGRESS_BARS) as bar:
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


# --- the table ---------------------------------------------------------------------------------

def table_bytes(count: int, dim: int, dtype="float16") -> int:
    """Bytes of a table on disk: the embeddings plus the 8-byte keys (npy headers aside)."""
    return count * (dim * np.dtype(dtype).itemsize + 8)


def build_table(out, captions, tokenizer, encoder, model_name, dtype="float16", chunk=1024, workers=0,
                stats=None):
    """Scan, then embed every distinct caption into ``out`` (resumable); returns the table.

    ``stats``, a dict if given, receives timings and counts (used by ``xsample_openclip.bench``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scan = CaptionScan.run(captions, tokenizer, out / SCAN_DIR, workers=workers)
    t_scan = time.perf_counter() - t0
    keys = scan.keys
    progress_file = out / PROGRESS
    done = 0
    if progress_file.is_file() and (out / KEYS).is_file() and (out / EMBEDDINGS).is_file() \
            and np.array_equal(np.load(out / KEYS, mmap_mode="r"), keys):
        done = json.loads(progress_file.read_text())["done"]
        emb = np.load(out / EMBEDDINGS, mmap_mode="r+")
        logging.info(f"resuming: {done}/{len(keys)} captions already embedded")
    else:
        np.save(out / KEYS, keys)
        emb = np.lib.format.open_memmap(out / EMBEDDINGS, mode="w+", dtype=dtype, shape=(len(keys), encoder.dim))
        progress_file.write_text(json.dumps({"done": 0}))
    size = table_bytes(len(keys), encoder.dim, dtype)
    logging.info(f"{len(keys)} distinct captions of {scan.total} read ({scan.total / max(t_scan, 1e-9):.0f}/s); "
                 f"table {out}: {size / 2**20:.1f} MiB memory-mapped ({len(keys)} x {encoder.dim} {dtype} "
                 f"+ 8-byte keys)")
    t1 = time.perf_counter()
    with tqdm(total=len(keys), initial=done, desc="embedding captions", unit=" captions", unit_scale=True,
              mininterval=1.0, disable=not PROGRESS_BARS) as bar:
        for start in range(done, len(keys), chunk):
            batch = scan.texts(start, start + chunk)
            emb[start:start + len(batch)] = encoder.encode(batch).cpu().numpy().astype(dtype)
            emb.flush()
            progress_file.write_text(json.dumps({"done": start + len(batch)}))
            bar.update(len(batch))
    t_embed = time.perf_counter() - t1
    del emb
    meta = table_meta(tokenizer, encoder.name, model_name, captions_read=scan.total)
    write_meta(out, meta, count=len(keys), dim=encoder.dim, dtype=dtype)
    progress_file.unlink()
    scan.remove()
    size = (out / EMBEDDINGS).stat().st_size + (out / KEYS).stat().st_size
    logging.info(f"wrote {len(keys)} distinct captions (of {scan.total} read) to {out}: {size / 2**20:.1f} MiB; "
                 f"scan {t_scan:.1f} s, embedding {t_embed:.1f} s "
                 f"({(len(keys) - done) / max(t_embed, 1e-9):.0f} captions/s)")
    if stats is not None:
        stats.update(captions=scan.total, distinct=len(keys), embedded=len(keys) - done, scan_s=t_scan,
                     embed_s=t_embed, bytes=size)
    return EmbeddingTable(out)


def check_table(table: EmbeddingTable, captions, tokenizer, workers=0, details=False):
    """How many captions of the data are missing from the table (streamed: keys only, no texts).

    Returns ``captions`` (read), ``distinct`` and ``missing_distinct``; with ``details`` also
    ``missing`` (captions read whose key is missing, duplicates counted).
    """
    total = missing = 0
    missing_keys, all_keys = [], []
    with tqdm(desc="checking captions", unit=" captions", unit_scale=True, mininterval=1.0, disable=not PROGRESS_BARS) as bar:
        for n, (keys, _) in _map_chunks(captions, tokenizer, False, workers):
            _, present = table.find(keys)
            missing += int((~present).sum())
            missing_keys.append(keys[~present])
            all_keys.append(np.unique(keys))
            total += n
            bar.update(n)
    distinct = np.unique(np.concatenate(all_keys)).size if all_keys else 0
    missing_distinct = np.unique(np.concatenate(missing_keys)).size if missing_keys else 0
    report = {"captions": total, "distinct": int(distinct), "missing_distinct": int(missing_distinct)}
    if details:
        report["missing"] = missing
    return report


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.precompute", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="OpenCLIP model name whose tokenizer training uses")
    p.add_argument("--train-data", required=True, help="same value as open_clip_train's --train-data")
    p.add_argument("--dataset-type", default="auto", choices=["auto", "csv", "webdataset"])
    p.add_argument("--csv-caption-key", default="title")
    p.add_argument("--csv-separator", default="\t")
    p.add_argument("--force-context-length", type=int, default=None)
    p.add_argument("--out", required=True, help="table folder (pass it to --xsample-embeddings)")
    p.add_argument("--encoder", default="minilm", help="same meaning as --xsample-encoder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--batch-size", type=int, default=1024, help="captions per encoder call and progress save")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that tokenize and key captions while scanning (0: in this process)")
    p.add_argument("--check", action="store_true", help="only report captions missing from --out")
    return p.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from open_clip import get_tokenizer

    from xsample_openclip import model_configs

    model_configs.register()
    tokenizer = get_tokenizer(args.model, context_length=args.force_context_length)
    read = ReadReport()
    captions = iter_captions(args.train_data, args.dataset_type, args.csv_caption_key, args.csv_separator, read)
    if args.check:
        report = check_table(EmbeddingTable(args.out), captions, tokenizer, workers=args.workers, details=True)
        report["skipped_not_utf8"] = read.skipped_not_utf8
        report["unreadable_sources"] = len(read.unreadable_sources)
        logging.info(read.summary())
        print(json.dumps(report))
        if report["missing_distinct"]:
            logging.info(f"{report['missing']} of {report['captions']} training captions "
                         f"({report['missing_distinct']} of {report['distinct']} distinct) are missing from "
                         f"{args.out}: rebuild it over this --train-data with the same --model")
        return 1 if report["missing_distinct"] else 0
    from .targets.encoders import SentenceEncoder

    build_table(args.out, captions, tokenizer, SentenceEncoder(args.encoder, device=args.device),
                args.model, dtype=args.dtype, chunk=args.batch_size, workers=args.workers)
    logging.info(read.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
