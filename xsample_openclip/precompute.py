"""Precompute the caption-embedding table for ``--xsample-embeddings``, in one process or many.

    # one process
    python -m xsample_openclip.precompute --model MODEL --train-data DATA --out TABLE [--check]
    # N independent jobs (any machines that share TABLE's file system), then one merge
    python -m xsample_openclip.precompute --model MODEL --train-data DATA --out TABLE --shard I/N
    python -m xsample_openclip.precompute --out TABLE --merge
    # torchrun: rank R builds shard R/WORLD_SIZE (--device cuda: on cuda:LOCAL_RANK), rank 0 merges
    torchrun --nproc_per_node 8 -m xsample_openclip.precompute --model MODEL --train-data DATA \\
        --out TABLE --device cuda

Captions are read exactly as OpenCLIP's loader reads them (CSV column or webdataset ``.txt``
members; skipped members and unreadable shards are counted and reported), tokenized with the model's
own tokenizer, keyed by ``token_keys`` and decoded back, so the table holds what the online encoder
would compute: training with the table is training with the online encoder, minus its cost.

Built for millions of captions, in two streamed passes:
1. scan: sources are read one after another in chunks, tokenized (``--workers`` processes), keyed and
   decoded; each chunk's distinct (key, text) records are appended to spill files in
   ``TABLE_DIR/scan/``. Memory stays bounded: texts never accumulate in RAM, only the 8-byte keys
   are sorted once at the end (``np.unique``, about 24 bytes per caption read at that moment).
2. embed: distinct captions, in key order, are encoded in batches into a memory-mapped
   ``embeddings.npy`` whose size is logged before the first batch; a progress bar shows rate and
   ETA; progress is saved after every batch, so an interrupted run resumes where it stopped (the scan
   is redone to make sure the data did not change), and a finished table re-run over the same
   captions is kept as it is. ``meta.json`` is written last, with what the read skipped.

Shards: the sources of ``--train-data`` (after brace expansion) are dealt round-robin, shard I of N
reading sources I, I+N, I+2N, ...; its sub-table goes to ``TABLE/shards/I-of-N/`` (a table of the same
layout, resumable the same way; meta.json adds the shard and a digest of the source list). ``--merge``
refuses, naming the fix, unless all N sub-tables are finished and made the same way (encoder, model,
tokenizer, context length, decoder version, dtype, width, source list); it unions their keys (a caption
in several shards is kept once, from the lowest shard: same key, same token ids, same text), copies
rows shard after shard into a memory-mapped ``TABLE/embeddings.npy`` (progress saved after each
shard), sums the reads and writes meta.json last. A merge of unchanged sub-tables is not redone.
Under torchrun (WORLD_SIZE > 1) the ranks meet at a gloo barrier after their shards; every rank exits
with rank 0's code (non-zero on all ranks when any shard or the merge failed).

``--check`` streams the data again and reports how many captions (and distinct captions) are missing
from a finished table, and what the read skipped; it exits 1 when any are missing. With ``--shard``
it checks that shard's sub-table against its sources; under torchrun each rank checks its share of
the sources against TABLE and rank 0 prints the sum.
"""
import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import Iterator, List

import numpy as np
from tqdm import tqdm

from .targets.decode import TokenDecoder
from .targets.keys import token_keys
from .targets.sources import READ_CHUNK, ReadReport, expand_sources, iter_captions, sources_digest
from .targets.table import EMBEDDINGS, KEYS, META, EmbeddingTable, table_meta, write_meta

PROGRESS = "progress.json"
MERGE_PROGRESS = "merge-progress.json"
SCAN_DIR = "scan"
SHARDS_DIR = "shards"
#: Progress bars (rate and ETA) on stderr; ``xsample_openclip.bench`` turns them off.
PROGRESS_BARS = True
#: meta.json fields that say how rows were made: a table is resumed or kept only if they agree, and
#: sub-tables are merged only if they agree (besides "shard", which tells them apart).
MADE_AS = ("encoder", "model", "tokenizer", "context_length", "decoder_version", "dim", "dtype",
           "sources_digest")
#: Rows a merge copies per step (48 MiB at 384 float16 columns): bounded memory at any table size.
MERGE_ROWS = 65536
#: How long torchrun ranks wait for each other at the barrier. Shards of uneven sources can finish
#: hours apart; a rank that dies makes torchrun stop the others, so none waits this long for a crash.
BARRIER_TIMEOUT = timedelta(hours=48)


class PrecomputeError(Exception):
    """A refusal whose message names the fix; the command logs it and exits 2."""


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


def _made_as(meta: dict) -> dict:
    """The fields of a table's meta that say how its rows were made (``MADE_AS`` plus its shard)."""
    return {k: meta.get(k) for k in MADE_AS + ("shard",)}


def _same_keys(out: Path, keys: np.ndarray) -> bool:
    return (out / KEYS).is_file() and (out / EMBEDDINGS).is_file() and \
        np.array_equal(np.load(out / KEYS, mmap_mode="r"), keys)


def _open_rows(out: Path, keys: np.ndarray, made: dict, dtype):
    """(rows already embedded, writable embeddings or None when all are): keeps a finished table of
    these keys made the same way, resumes an interrupted one, else starts over."""
    progress_file = out / PROGRESS
    if (out / META).is_file() and _made_as(json.loads((out / META).read_text())) == made \
            and _same_keys(out, keys):
        logging.info(f"{out} is already a finished table of these {len(keys)} captions; nothing to embed")
        return len(keys), None
    if progress_file.is_file() and _same_keys(out, keys):
        progress = json.loads(progress_file.read_text())
        if progress.get("made") == made:
            logging.info(f"resuming: {progress['done']}/{len(keys)} captions already embedded")
            return progress["done"], np.load(out / EMBEDDINGS, mmap_mode="r+")
    (out / META).unlink(missing_ok=True)  # not a finished table until meta.json is written again
    np.save(out / KEYS, keys)
    emb = np.lib.format.open_memmap(out / EMBEDDINGS, mode="w+", dtype=dtype, shape=(len(keys), made["dim"]))
    progress_file.write_text(json.dumps({"done": 0, "made": made}))
    return 0, emb


def build_table(out, captions, tokenizer, encoder, model_name, dtype="float16", chunk=1024, workers=0,
                stats=None, read=None, meta=None):
    """Scan, then embed every distinct caption into ``out`` (resumable); returns the table.

    ``read``: the ``ReadReport`` filled while ``captions`` is read; what it skipped goes to meta.json.
    ``meta``: more meta.json fields (a shard's). ``stats``, a dict if given, receives timings and
    counts (used by ``xsample_openclip.bench``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scan = CaptionScan.run(captions, tokenizer, out / SCAN_DIR, workers=workers)
    t_scan = time.perf_counter() - t0
    keys = scan.keys
    read_meta = dict(read.meta() if read is not None else {}, captions_read=scan.total)
    meta = table_meta(tokenizer, encoder.name, model_name, **read_meta, **(meta or {}))
    made = _made_as(dict(meta, dim=encoder.dim, dtype=str(np.dtype(dtype))))
    done, emb = _open_rows(out, keys, made, dtype)
    progress_file = out / PROGRESS
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
            progress_file.write_text(json.dumps({"done": start + len(batch), "made": made}))
            bar.update(len(batch))
    t_embed = time.perf_counter() - t1
    del emb
    write_meta(out, meta, count=len(keys), dim=encoder.dim, dtype=dtype)
    progress_file.unlink(missing_ok=True)
    scan.remove()
    size = (out / EMBEDDINGS).stat().st_size + (out / KEYS).stat().st_size
    logging.info(f"wrote {len(keys)} distinct captions (of {scan.total} read) to {out}: {size / 2**20:.1f} MiB; "
                 f"scan {t_scan:.1f} s, embedding {t_embed:.1f} s "
                 f"({(len(keys) - done) / max(t_embed, 1e-9):.0f} captions/s)")
    if stats is not None:
        stats.update(captions=scan.total, distinct=len(keys), embedded=len(keys) - done, scan_s=t_scan,
                     embed_s=t_embed, bytes=size)
    return EmbeddingTable(out)


# --- the check ---------------------------------------------------------------------------------

def check_part(table: EmbeddingTable, captions, tokenizer, workers=0) -> dict:
    """One stream checked against a table (keys only, no texts): counts and the distinct keys seen
    and missing, so the parts of several processes combine (``combine_checks``)."""
    total = missing = 0
    missing_keys, all_keys = [], []
    with tqdm(desc="checking captions", unit=" captions", unit_scale=True, mininterval=1.0,
              disable=not PROGRESS_BARS) as bar:
        for n, (keys, _) in _map_chunks(captions, tokenizer, False, workers):
            _, present = table.find(keys)
            missing += int((~present).sum())
            missing_keys.append(np.unique(keys[~present]))
            all_keys.append(np.unique(keys))
            total += n
            bar.update(n)
    empty = [np.zeros(0, np.uint64)]
    return {"captions": total, "missing": missing, "keys": np.unique(np.concatenate(all_keys + empty)),
            "missing_keys": np.unique(np.concatenate(missing_keys + empty))}


def combine_checks(parts) -> dict:
    """``captions``, ``distinct``, ``missing_distinct`` and ``missing`` (duplicates counted) of parts."""
    return {"captions": sum(p["captions"] for p in parts),
            "distinct": int(np.unique(np.concatenate([p["keys"] for p in parts])).size),
            "missing_distinct": int(np.unique(np.concatenate([p["missing_keys"] for p in parts])).size),
            "missing": sum(p["missing"] for p in parts)}


def check_table(table: EmbeddingTable, captions, tokenizer, workers=0, details=False):
    """How many captions of the data are missing from the table (streamed: keys only, no texts).

    Returns ``captions`` (read), ``distinct`` and ``missing_distinct``; with ``details`` also
    ``missing`` (captions read whose key is missing, duplicates counted).
    """
    report = combine_checks([check_part(table, captions, tokenizer, workers)])
    if not details:
        del report["missing"]
    return report


# --- one process's part: the whole data, or one shard's sources --------------------------------

def parse_shard(text: str):
    """``--shard I/N`` as (I, N), with 0 <= I < N."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (e.g. 0/4: the first of 4 shards)") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: shards of N are numbered 0/N .. N-1/N")
    return index, count


def shard_dir(out, index: int, count: int) -> Path:
    return Path(out) / SHARDS_DIR / f"{index}-of-{count}"


def plan(args, shard=None):
    """(table folder, sources, extra meta.json fields) of a run: all of --train-data into --out, or
    for ``shard`` (I, N) sources I, I+N, ... into its sub-table under --out."""
    sources = expand_sources(args.train_data)
    if shard is None:
        return Path(args.out), sources, {}
    index, count = shard
    share = sources[index::count]
    if not share:
        logging.warning(f"shard {index}/{count} has no sources: --train-data has only {len(sources)}; "
                        "its sub-table is empty (use at most as many shards as sources)")
    return shard_dir(args.out, index, count), share, {
        "shard": {"index": index, "count": count, "sources": len(share)}, "sources_digest": sources_digest(sources)}


def read_captions(args, sources, read: ReadReport):
    return iter_captions(args.train_data, args.dataset_type, args.csv_caption_key, args.csv_separator, read,
                         sources=sources)


def build(args, tokenizer, encoder, shard=None) -> EmbeddingTable:
    """Build the table of ``args`` (or one shard's sub-table) and log what its read skipped."""
    folder, sources, extra = plan(args, shard)
    read = ReadReport()
    table = build_table(folder, read_captions(args, sources, read), tokenizer, encoder, args.model,
                        dtype=args.dtype, chunk=args.batch_size, workers=args.workers, read=read, meta=extra)
    what = f"shard {shard[0]}/{shard[1]} ({len(sources)} source(s))" if shard else f"{len(sources)} source(s)"
    logging.info(f"{what}: {read.summary()}; {len(table)} distinct captions in {folder}")
    return table


def check_sources(args, tokenizer, folder, sources) -> dict:
    """``check_part`` of these sources of --train-data against the table in ``folder``, with its read."""
    read = ReadReport()
    part = check_part(EmbeddingTable(folder), read_captions(args, sources, read), tokenizer, args.workers)
    return dict(part, read=read)


def report_check(folder, parts) -> int:
    """Print --check's JSON (with what the read skipped); exit code 1 when captions are missing."""
    report = combine_checks(parts)
    read = ReadReport.combined(p["read"] for p in parts)
    report.update(skipped_not_utf8=read.skipped_not_utf8, unreadable_sources=len(read.unreadable_sources))
    logging.info(read.summary())
    print(json.dumps(report), flush=True)
    if report["missing_distinct"]:
        logging.info(f"{report['missing']} of {report['captions']} training captions "
                     f"({report['missing_distinct']} of {report['distinct']} distinct) are missing from "
                     f"{folder}: rebuild it over this --train-data with the same --model")
    return 1 if report["missing_distinct"] else 0


# --- the merge -----------------------------------------------------------------------------------

def find_shards(out, count=None):
    """(N, {index: folder}) of the split under OUT/shards to merge: ``count`` shards, or the only split."""
    root = Path(out) / SHARDS_DIR
    splits = {}
    for folder in sorted(root.glob("*-of-*")):
        match = re.fullmatch(r"(\d+)-of-(\d+)", folder.name)
        if match and folder.is_dir():
            splits.setdefault(int(match[2]), {})[int(match[1])] = folder
    if count is None:
        if not splits:
            raise PrecomputeError(
                f"no shard sub-tables under {root}; build them first, one job per shard: `python -m "
                f"xsample_openclip.precompute --model MODEL --train-data DATA --out {out} --shard I/N` "
                "for I = 0 .. N-1")
        if len(splits) > 1:
            raise PrecomputeError(
                f"{root} holds sub-tables of {len(splits)} different splits (N = "
                f"{', '.join(map(str, sorted(splits)))}); delete the folders of the split(s) you are not "
                f"merging (e.g. {root}/*-of-{max(splits)})")
        count = next(iter(splits))
    return count, splits.get(count, {})


def _shard_command(out, index, count, meta=None) -> str:
    model = (meta or {}).get("model", "MODEL")
    return (f"`python -m xsample_openclip.precompute --model {model} --train-data DATA --out {out} "
            f"--shard {index}/{count}`")


def shard_metas(out, count, folders) -> List[dict]:
    """meta.json of each of the N sub-tables; refuses, naming the jobs to (re-)run, when any is
    missing or unfinished (no meta.json: interrupted, or still running)."""
    metas, missing, unfinished = {}, [], []
    for index in range(count):
        folder = folders.get(index)
        if folder is None:
            missing.append(index)
        elif not (folder / META).is_file():
            unfinished.append(index)
        else:
            metas[index] = json.loads((folder / META).read_text())
    if missing or unfinished:
        some = next(iter(metas.values()), None)
        problems = [f"shard {i}/{count} is missing ({shard_dir(out, i, count)} does not exist)" for i in missing]
        problems += [f"shard {i}/{count} is unfinished (no meta.json in {folders[i]}: interrupted or still "
                     "running; re-running it resumes)" for i in unfinished]
        runs = "; ".join(_shard_command(out, i, count, some) for i in sorted(missing + unfinished))
        raise PrecomputeError(f"cannot merge {count} shards into {out}: {'; '.join(problems)}. Run "
                              f"{runs} with the same flags as the other shards, then --merge again")
    return [metas[i] for i in range(count)]


def check_compatible(out, metas: List[dict], model=None, train_data=None) -> None:
    """Refuses sub-tables whose rows were not made the same way (or not for this --model/--train-data)."""
    count = len(metas)
    problems = []
    for field in MADE_AS:
        values = [json.dumps(m.get(field)) for m in metas]
        common = max(values, key=values.count)
        odd = [i for i, v in enumerate(values) if v != common]
        if odd:
            problems.append(f"{field} of shard(s) {', '.join(f'{i}/{count}' for i in odd)} is "
                            f"{', '.join(values[i] for i in odd)}, not {common} as in the others; rebuild them "
                            f"with the same flags as the others ({_shard_command(out, odd[0], count, metas[0])})")
    for index, meta in enumerate(metas):
        if meta.get("shard", {}).get("index") != index or meta.get("shard", {}).get("count") != count:
            problems.append(f"{shard_dir(out, index, count)} holds {meta.get('shard') or 'no shard'} (a copied or "
                            f"renamed folder?); rebuild it with {_shard_command(out, index, count, meta)}")
    if model is not None and metas[0].get("model") != model:
        problems.append(f"the shards were built for --model {metas[0].get('model')}, not --model {model}; merge "
                        f"with --model {metas[0].get('model')}, or rebuild every shard with --model {model}")
    if train_data is not None and metas[0].get("sources_digest") != sources_digest(expand_sources(train_data)):
        problems.append("the shards were built from another --train-data (another list of sources); merge "
                        "with the --train-data they were built from, or rebuild every shard")
    if problems:
        raise PrecomputeError(f"cannot merge the {count} sub-tables under {Path(out) / SHARDS_DIR}: "
                              + "; ".join(problems))


def _fingerprint(folders) -> str:
    """Changes whenever a sub-table is rebuilt (its meta.json is rewritten last)."""
    digest = hashlib.sha256()
    for folder in folders:
        digest.update((folder / META).read_bytes())
    return digest.hexdigest()[:16]


def _merged_from(out: Path):
    """Fingerprint of the sub-tables the finished table ``out`` was merged from (None if it was not)."""
    if not (out / META).is_file():
        return None
    return json.loads((out / META).read_text()).get("merged", {}).get("fingerprint")


def _open_merge(out: Path, keys, fingerprint, dim, dtype):
    """(shards already copied, writable embeddings): resumes an interrupted merge of the same
    sub-tables, else starts over (dropping whatever table or build was in ``out``)."""
    progress_file = out / MERGE_PROGRESS
    if progress_file.is_file() and _same_keys(out, keys):
        progress = json.loads(progress_file.read_text())
        if progress.get("fingerprint") == fingerprint:
            logging.info(f"resuming the merge: {progress['shards_done']} shard(s) already copied")
            return progress["shards_done"], np.load(out / EMBEDDINGS, mmap_mode="r+")
    (out / META).unlink(missing_ok=True)
    (out / PROGRESS).unlink(missing_ok=True)
    np.save(out / KEYS, keys)
    emb = np.lib.format.open_memmap(out / EMBEDDINGS, mode="w+", dtype=dtype, shape=(len(keys), dim))
    progress_file.write_text(json.dumps({"shards_done": 0, "fingerprint": fingerprint}))
    return 0, emb


def _copy_rows(emb, rows, take, src) -> None:
    """``emb[rows[take]] = src[take]``, MERGE_ROWS source rows at a time."""
    for start in range(0, len(rows), MERGE_ROWS):
        part = slice(start, start + MERGE_ROWS)
        mask = take[part]
        if mask.any():
            emb[rows[part][mask]] = np.asarray(src[part])[mask]


def merge_shards(out, count=None, model=None, train_data=None) -> EmbeddingTable:
    """Merge the N sub-tables under OUT/shards into the table OUT (resumable); returns it.

    ``count``: N (default: the only split there); ``model``/``train_data``: refuse shards built for others.
    """
    out = Path(out)
    if not (out / SHARDS_DIR).is_dir() and _merged_from(out):
        logging.info(f"{out} is a merged table whose sub-tables were deleted; nothing to merge")
        return EmbeddingTable(out)
    count, found = find_shards(out, count)
    metas = shard_metas(out, count, found)
    check_compatible(out, metas, model, train_data)
    folders = [found[i] for i in range(count)]
    fingerprint = _fingerprint(folders)
    read = ReadReport.combined(ReadReport.from_meta(m) for m in metas)
    if _merged_from(out) == fingerprint:
        logging.info(f"{out} already merges these {count} sub-tables; nothing to do ({read.summary()})")
        return EmbeddingTable(out)
    t0 = time.perf_counter()
    keys = np.unique(np.concatenate([np.load(f / KEYS) for f in folders]))
    dim, dtype = int(metas[0]["dim"]), metas[0]["dtype"]
    done, emb = _open_merge(out, keys, fingerprint, dim, dtype)
    filled = np.zeros(len(keys), dtype=bool)
    rows_in_shards = 0
    for index, folder in enumerate(folders):
        shard_keys = np.load(folder / KEYS, mmap_mode="r")
        rows = np.searchsorted(keys, shard_keys)
        if index >= done:
            _copy_rows(emb, rows, ~filled[rows], np.load(folder / EMBEDDINGS, mmap_mode="r"))
            emb.flush()
            (out / MERGE_PROGRESS).write_text(json.dumps({"shards_done": index + 1, "fingerprint": fingerprint}))
            logging.info(f"merged shard {index}/{count}: {len(shard_keys)} distinct captions of "
                         f"{metas[index]['captions_read']} read")
        filled[rows] = True
        rows_in_shards += len(shard_keys)
    del emb
    meta = {k: metas[0].get(k) for k in MADE_AS if k not in ("dim", "dtype")}
    meta.update(read.meta(), merged={"shards": count, "fingerprint": fingerprint})
    write_meta(out, meta, count=len(keys), dim=dim, dtype=dtype)
    (out / MERGE_PROGRESS).unlink()
    size = (out / EMBEDDINGS).stat().st_size + (out / KEYS).stat().st_size
    shards_size = sum(f.stat().st_size for folder in folders for f in folder.iterdir() if f.is_file())
    logging.info(f"merged {count} shards into {out}: {len(keys)} distinct captions ({rows_in_shards - len(keys)} "
                 f"found in more than one shard), {size / 2**20:.1f} MiB, in {time.perf_counter() - t0:.1f} s; "
                 f"{read.summary()}. The sub-tables under {out / SHARDS_DIR} ({shards_size / 2**20:.1f} MiB) are "
                 "no longer needed")
    return EmbeddingTable(out)


# --- torchrun ------------------------------------------------------------------------------------

def distributed_env():
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def rank_device(device: str, local_rank: int) -> str:
    """``cuda`` under torchrun means this rank's own GPU."""
    return f"cuda:{local_rank}" if device == "cuda" else device


def attempt(step) -> int:
    """Run ``step``; 0, or the exit code of its failure (logged): 2 for a refusal, 1 for an error."""
    try:
        step()
        return 0
    except PrecomputeError as err:
        logging.error(str(err))
        return 2
    except Exception:
        logging.exception("failed")
        return 1


def run_distributed(args, tokenizer, rank, world, local_rank) -> int:
    """Each rank builds (or checks) its shard, all meet at a gloo barrier, rank 0 merges (or sums the
    check); every rank returns rank 0's exit code, so none exits alone or is left waiting."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        code = (_distributed_check if args.check else _distributed_build)(args, tokenizer, rank, world, local_rank)
        code = torch.tensor([code])
        dist.broadcast(code, 0)
        return int(code)
    finally:
        dist.destroy_process_group()


def _distributed_build(args, tokenizer, rank, world, local_rank) -> int:
    """This rank's shard on its own device; then rank 0 merges, only if no rank failed."""
    import torch
    import torch.distributed as dist

    from .targets.encoders import SentenceEncoder

    failed = torch.tensor([attempt(lambda: build(args, tokenizer, SentenceEncoder(
        args.encoder, device=rank_device(args.device, local_rank)), (rank, world))) != 0])
    dist.all_reduce(failed)  # the barrier: every rank's shard is finished (or failed) past this line
    if failed.item():
        logging.error(f"{failed.item()} of {world} shard(s) failed (errors above); fix the cause and run the "
                      "same command again: finished shards are kept, interrupted ones resume")
        return 1
    if rank != 0:
        return 0
    return attempt(lambda: merge_shards(args.out, world, args.model, args.train_data))


def _distributed_check(args, tokenizer, rank, world, local_rank) -> int:
    """This rank's share of the sources against the merged table; rank 0 reports the sum."""
    import torch.distributed as dist

    share = expand_sources(args.train_data)[rank::world]
    part = {}
    code = attempt(lambda: part.update(check_sources(args, tokenizer, args.out, share)))
    parts = [None] * world if rank == 0 else None
    dist.gather_object(part if code == 0 else None, parts, dst=0)
    if rank != 0:
        return code
    if any(p is None for p in parts):
        logging.error(f"{sum(p is None for p in parts)} of {world} rank(s) could not check their share (errors above)")
        return 2
    return report_check(args.out, parts)


# --- the command ---------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.precompute", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="OpenCLIP model name whose tokenizer training uses (required, except with --merge)")
    p.add_argument("--train-data", help="same value as open_clip_train's --train-data (required, except with --merge)")
    p.add_argument("--dataset-type", default="auto", choices=["auto", "csv", "webdataset"])
    p.add_argument("--csv-caption-key", default="title")
    p.add_argument("--csv-separator", default="\t")
    p.add_argument("--force-context-length", type=int, default=None)
    p.add_argument("--out", required=True, help="table folder (pass it to --xsample-embeddings)")
    p.add_argument("--encoder", default="minilm", help="same meaning as --xsample-encoder")
    p.add_argument("--device", default="cpu", help="encoder device; under torchrun 'cuda' means cuda:LOCAL_RANK")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--batch-size", type=int, default=1024, help="captions per encoder call and progress save")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that tokenize and key captions while scanning (0: in this process)")
    p.add_argument("--check", action="store_true", help="only report captions missing from --out")
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="build (or --check) only shard I of N: sources I, I+N, ... into OUT/shards/I-of-N")
    p.add_argument("--merge", action="store_true",
                   help="merge the finished sub-tables OUT/shards/*-of-N into the table OUT")
    args = p.parse_args(argv)
    if args.merge and (args.check or args.shard):
        p.error("--merge takes only --out (and optionally --model, --train-data to verify the shards)")
    if not args.merge and not (args.model and args.train_data):
        p.error("--model and --train-data are required (except with --merge)")
    return args


def main(argv=None):
    rank, world, local_rank = distributed_env()
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}/{world}] %(message)s" if world > 1 else "%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if world > 1 and (args.shard or args.merge):
        logging.error("under torchrun each rank builds its own shard and rank 0 merges: drop --shard/--merge")
        return 2
    if args.merge:
        return attempt(lambda: merge_shards(args.out, model=args.model, train_data=args.train_data))
    from open_clip import get_tokenizer

    from xsample_openclip import model_configs

    model_configs.register()
    tokenizer = get_tokenizer(args.model, context_length=args.force_context_length)
    if world > 1:
        return run_distributed(args, tokenizer, rank, world, local_rank)
    if args.check:
        folder, sources, _ = plan(args, args.shard)
        return report_check(folder, [check_sources(args, tokenizer, folder, sources)])
    from .targets.encoders import SentenceEncoder

    build(args, tokenizer, SentenceEncoder(args.encoder, device=args.device), args.shard)
    if args.shard:
        logging.info(f"when all {args.shard[1]} shards are built: python -m xsample_openclip.precompute "
                     f"--out {args.out} --merge")
    return 0


if __name__ == "__main__":
    sys.exit(main())
