"""Shard jobs and the merge: which sources shard I of N reads, where its sub-table goes, and how
finished, compatible sub-tables become one table (streamed, resumable)."""
import argparse
import contextlib
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import List

import numpy as np

from ..targets.sources import ReadReport, expand_sources, sources_digest
from ..targets.table import EMBEDDINGS, KEYS, META, EmbeddingTable, write_meta
from .common import MADE_AS, MERGE_PROGRESS, MERGE_ROWS, PROGRESS, PrecomputeError, SHARDS_DIR
from .lock import writer_lock
from .tables import _same_keys

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
    Holds the write locks of ``out`` and of every sub-table it reads (lock.py): refused while another
    merge or build writes ``out``, or a shard job still writes one of the sub-tables.
    """
    out = Path(out)
    with contextlib.ExitStack() as locks:
        locks.enter_context(writer_lock(out))
        return _merge_locked(out, count, model, train_data, locks)


def _merge_locked(out: Path, count, model, train_data, locks) -> EmbeddingTable:
    if not (out / SHARDS_DIR).is_dir() and _merged_from(out):
        logging.info(f"{out} is a merged table whose sub-tables were deleted; nothing to merge")
        return EmbeddingTable(out)
    count, found = find_shards(out, count)
    for index in sorted(found):
        locks.enter_context(writer_lock(found[index]))
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
