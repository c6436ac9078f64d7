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
from .common import PrecomputeError
from .scan import CaptionScan, unique_captions
from .shards import merge_shards, shard_dir
from .tables import build_table, check_table
from .cli import main, parse_args
from .jobs import build

__all__ = ["CaptionScan", "PrecomputeError", "build", "build_table", "check_table", "main", "merge_shards",
           "parse_args", "shard_dir", "unique_captions"]
