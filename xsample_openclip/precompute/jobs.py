"""What one process does: plan its sources and table folder, build it, or check the data against it."""
import json
import logging
from pathlib import Path

from ..targets.sources import ReadReport, expand_sources, iter_captions, sources_digest
from ..targets.table import EmbeddingTable
from .shards import shard_dir
from .tables import build_table, check_part, combine_checks


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
