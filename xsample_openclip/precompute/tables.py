"""Build a table from a caption stream (scan, then embed into a memory-mapped file; resumable), and
check a stream against a finished table."""
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..progress import progress_bar
from ..targets.table import EMBEDDINGS, KEYS, META, EmbeddingTable, table_meta, write_meta
from . import common
from .common import MADE_AS, PROGRESS, SCAN_DIR
from .lock import writer_lock
from .scan import CaptionScan, _map_chunks

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
    counts (used by ``xsample_openclip.bench``). Holds ``out``'s write lock throughout (lock.py): a
    second process building into the same folder is refused before it touches anything.
    """
    with writer_lock(out):
        return _build_locked(Path(out), captions, tokenizer, encoder, model_name, dtype, chunk, workers,
                             stats, read, meta)


def _build_locked(out: Path, captions, tokenizer, encoder, model_name, dtype, chunk, workers, stats, read, meta):
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
    with progress_bar(total=len(keys), initial=done, desc="embedding captions", unit=" captions",
                      unit_scale=True, mininterval=1.0, disable=not common.PROGRESS_BARS) as bar:
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
    with progress_bar(desc="checking captions", unit=" captions", unit_scale=True, mininterval=1.0,
                      disable=not common.PROGRESS_BARS) as bar:
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
