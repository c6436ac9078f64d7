"""Section ``precompute``: throughput and memory of ``xsample_openclip.precompute`` on generated shards.

Distinct generated captions (``data.text_captions``) in 4 ``.txt``-only webdataset shards are turned into
a table: the scan's and the embedding's rates, the table's bytes per caption (each extrapolated to 1M
distinct captions), the scan's memory against keeping every caption's text in a dict, and the
missing-caption check (``--check``) against captions that are not in the table.
"""
import json
import logging
import tracemalloc

from .common import MIB, load_average, markdown_table, say
from ..data.writers import write_text_shards
from .data import text_captions

MISSING = 100


def run(args, device, results, work):
    import open_clip

    from .. import model_configs
    from .. import precompute as pc
    from ..targets.encoders import SentenceEncoder
    from ..targets.sources import iter_captions

    model_configs.register()
    k = args.precompute_captions
    work = work / "precompute"
    say(f"## precompute: {k:,} distinct generated captions in 4 webdataset shards, {device.type}, "
        f"{args.target_model} tokenizer ({load_average()})\n")
    caps = text_captions(k, seed=3)
    pattern = write_text_shards(work / "shards", caps, shards=4)
    tokenizer = open_clip.get_tokenizer(args.target_model)
    stats = {}
    logging.disable(logging.INFO)
    try:
        table = pc.build_table(work / "table", iter_captions(pattern), tokenizer,
                               SentenceEncoder(device=str(device)), args.target_model, stats=stats)
    finally:
        logging.disable(logging.NOTSET)
    memory = _scan_memory(caps[:min(k, 20_000)], tokenizer, work / "probe_scan")
    known = set(caps)
    extra = [c for c in text_captions(k + 5 * MISSING, seed=4) if c not in known][:MISSING]
    check = pc.check_table(table, iter(caps + extra + extra), tokenizer, details=True)
    record = dict(stats, scan_rate=stats["captions"] / stats["scan_s"], embed_rate=stats["embedded"] / stats["embed_s"],
                  bytes_per_caption=stats["bytes"] / stats["distinct"], check=check, **memory)
    _report(record)
    results["precompute"] = record


def _scan_memory(probe, tokenizer, folder):
    """tracemalloc peak of the spill-to-disk scan, and the bytes per caption of an in-memory dict of texts."""
    from .. import precompute as pc

    tracemalloc.start()
    try:
        pc.CaptionScan.run(iter(probe), tokenizer, folder).remove()
        scan_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        found, _ = pc.unique_captions(iter(probe), tokenizer)
        dict_bytes = tracemalloc.get_traced_memory()[0]
        del found
    finally:
        tracemalloc.stop()
    return dict(probe_captions=len(probe), scan_peak_bytes=scan_peak, dict_bytes_per_caption=dict_bytes / len(probe))


def _report(r):
    rows = [
        ["scan (read shards, tokenize, key, decode, spill)", f"{r['scan_rate']:,.0f} captions/s",
         f"{1e6 / r['scan_rate'] / 60:.1f} min"],
        ["embed (MiniLM, batches of 1024, memory-mapped writes)", f"{r['embed_rate']:,.0f} captions/s",
         f"{1e6 / r['embed_rate'] / 60:.1f} min"],
        ["table on disk (float16 + 8-byte keys)", f"{r['bytes_per_caption']:.0f} bytes/caption",
         f"{r['bytes_per_caption'] * 1e6 / MIB:,.0f} MiB"],
    ]
    say(markdown_table(["stage", "measured", "extrapolated to 1M distinct captions"], rows))
    per = r["dict_bytes_per_caption"]
    say(f"\n- Scan memory (tracemalloc, {r['probe_captions']:,} captions): spill-to-disk scan peak "
        f"{r['scan_peak_bytes'] / MIB:.1f} MiB, bounded by the 4096-caption chunk and ~24 B per caption for the "
        f"final key sort; keeping every text in a dict holds {per:.0f} B per distinct caption "
        f"({per * 1e7 / 2 ** 30:.1f} GiB for 10M).")
    say(f"- `--check` on the data plus {MISSING} captions not in the table (each twice): {json.dumps(r['check'])}. "
        f"({load_average()})\n")
