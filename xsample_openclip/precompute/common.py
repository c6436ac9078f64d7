"""What the precompute modules share: file names, how rows are made, limits, the error type."""
from datetime import timedelta

PROGRESS = "progress.json"
MERGE_PROGRESS = "merge-progress.json"
SCAN_DIR = "scan"
SHARDS_DIR = "shards"
#: Progress bars (rate and ETA) on stderr; ``xsample_openclip.bench`` turns them off (``common.PROGRESS_BARS``).
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
