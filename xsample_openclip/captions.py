"""From a batch's token ids to unit caption embeddings: the side data of the X-Sample target graph.

OpenCLIP's loader hands the loss only token ids, so captions are recovered from them: either decoded
back to text and embedded by a frozen sentence encoder (``OnlineCaptionEmbeddings``), or looked up in a
table precomputed from the same token ids (``TableCaptionEmbeddings``). Both are keyed by
``token_keys``, so the data loader stays unchanged and a table is an exact cache of the online path.
"""
import hashlib
from collections import OrderedDict
from typing import Dict, List, Optional, Protocol

import numpy as np
import torch


def _token_rows(tokens) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(tokens).cpu().numpy().astype(np.int32, copy=False))


def token_keys(tokens) -> np.ndarray:
    """64-bit keys of token-id rows (blake2b over int32 ids); identical captions share a key."""
    rows = tokens if isinstance(tokens, np.ndarray) and tokens.dtype == np.int32 else _token_rows(tokens)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in rows),
        dtype=np.uint64, count=len(rows),
    )


def clean_caption_text(value):
    """A caption cell as read with ``errors="surrogateescape"``: undecodable bytes become U+FFFD.

    Used wherever captions are read from files (the CSV loader patch, precompute) so the token ids and
    hence the keys agree. Anything that is not a ``str`` (pandas' NaN for an empty cell) is returned
    unchanged: OpenCLIP's ``str(caption)`` turns it into "nan", and so does every reader here.
    """
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# Odd captions, one bit each (see ``CaptionStats``).
EMPTY = 1          # nothing left after tokenizing (an empty or whitespace-only caption)
NO_WORDS = 2       # no letter or digit: punctuation, symbols or emoji only
NAN_TEXT = 4       # the text "nan": how OpenCLIP reads an empty CSV cell (pandas NaN, then str())
UNDECODABLE = 8    # contains U+FFFD: bytes that were not UTF-8, or a character cut by truncation
CONTEXT_FULL = 16  # the token row is full: the caption was cut at the context length (or fits exactly)
_FLAG_NAMES = (("empty", EMPTY), ("no_words", NO_WORDS), ("nan", NAN_TEXT), ("undecodable", UNDECODABLE),
               ("context_full", CONTEXT_FULL))


def text_flags(text: str) -> int:
    """Odd-caption bits of one decoded caption (cheap string checks)."""
    if not text:
        return EMPTY
    flags = 0
    if not any(ch.isalnum() for ch in text):
        flags |= NO_WORDS
    if text == "nan":
        flags |= NAN_TEXT
    if "\ufffd" in text:
        flags |= UNDECODABLE
    return flags


class TokenDecoder:
    """Turns OpenCLIP token-id rows back into caption text.

    SimpleTokenizer rows are cut at end-of-text and stripped of start-of-text and padding (id 0 would
    decode to "!"); the text comes back lowercased and truncated to the context length, which an
    uncased sentence encoder such as all-MiniLM-L6-v2 does not mind. HF tokenizers use their own
    ``batch_decode`` without special tokens.
    """

    def __init__(self, tokenizer):
        from open_clip.tokenizer import SimpleTokenizer

        self.tokenizer = tokenizer
        if isinstance(tokenizer, SimpleTokenizer):
            self._decode = self._decode_simple
        elif hasattr(getattr(tokenizer, "tokenizer", None), "batch_decode"):
            self._decode = self._decode_hf
        else:
            raise TypeError(f"cannot decode token ids of a {type(tokenizer).__name__}")

    def __call__(self, tokens) -> List[str]:
        return self._decode(torch.as_tensor(tokens).cpu().tolist())

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 0) or 0)

    def token_flags(self, rows: np.ndarray) -> np.ndarray:
        """EMPTY / CONTEXT_FULL bits read off token-id rows ``[B, ctx]`` (numpy), without decoding."""
        flags = np.zeros(len(rows), dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] < 2:
            return flags
        tok = self.tokenizer
        eot = getattr(tok, "eot_token_id", None)
        if eot is not None:  # SimpleTokenizer: [sot, ids..., eot, 0...]; a full row ends with eot
            flags[rows[:, 1] == eot] |= EMPTY
            flags[rows[:, -1] == eot] |= CONTEXT_FULL
        else:
            pad = getattr(getattr(tok, "tokenizer", None), "pad_token_id", None)
            if pad is not None:
                flags[rows[:, -1] != pad] |= CONTEXT_FULL
        return flags

    def _decode_simple(self, rows):
        tok = self.tokenizer
        texts = []
        for row in rows:
            if tok.eot_token_id in row:
                row = row[: row.index(tok.eot_token_id)]
            ids = [t for t in row if t not in (0, tok.sot_token_id)]
            texts.append(" ".join(tok.decode(ids).split()))
        return texts

    def _decode_hf(self, rows):
        texts = self.tokenizer.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


class CaptionEncoder(Protocol):
    """Frozen text encoder: captions to unit embeddings (fp32)."""

    name: str
    dim: int

    def encode(self, texts: List[str]) -> torch.Tensor: ...


class CaptionStats:
    """Counts the odd captions an embedder was handed; the training loop logs and resets it per epoch.

    Nothing is dropped or altered: an odd caption is embedded exactly as decoded (an empty one as the
    encoder's embedding of "", which all empty captions share), so the counts say what the targets were
    built from. Cheap: bit flags from the token ids (vectorised) and, on the online path, from the text
    when a caption is first decoded (cached with its embedding). With ``--accum-freq k`` OpenCLIP hands
    the loss the same concatenated batch k times per step; the training loop sets ``calls_per_batch``
    to k and only the first of those calls is counted.
    """

    FIELDS = ("samples", "batches") + tuple(name for name, _ in _FLAG_NAMES) + ("duplicates", "uniform_batches")

    def __init__(self):
        self.counts: Dict[str, int] = dict.fromkeys(self.FIELDS, 0)
        self.calls_per_batch = 1
        self._calls = 0

    def observe(self, keys: np.ndarray, flags: np.ndarray) -> None:
        call, self._calls = self._calls, self._calls + 1
        if call % max(1, self.calls_per_batch):
            return
        counts = self.counts
        counts["samples"] += len(keys)
        counts["batches"] += 1
        for name, bit in _FLAG_NAMES:
            counts[name] += int(np.count_nonzero(flags & bit))
        distinct = len(np.unique(keys))
        counts["duplicates"] += len(keys) - distinct
        if len(keys) > 1 and distinct == 1:
            counts["uniform_batches"] += 1

    def take(self) -> Dict[str, int]:
        """The counts so far; starts counting afresh (at a batch boundary: call it between epochs)."""
        counts, self.counts = self.counts, dict.fromkeys(self.FIELDS, 0)
        self._calls = 0
        return counts


def describe_caption_stats(counts: Dict[str, int], context_length: int = 0, text_checked: bool = True) -> str:
    """One log line: how many captions were odd and what was done with them."""
    parts = []
    labels = (
        ("empty", "empty"),
        ("nan", "the text 'nan' (an empty CSV cell as OpenCLIP reads it)"),
        ("no_words", "punctuation/symbols/emoji only"),
        ("undecodable", "with undecodable bytes (U+FFFD)"),
        ("context_full", f"cut at the context length{f' ({context_length} tokens)' if context_length else ''}"),
        ("duplicates", "repeating a caption earlier in the same batch"),
        ("uniform_batches", "batch(es) of identical captions (uniform targets)"),
    )
    for name, label in labels:
        if counts.get(name):
            parts.append(f"{counts[name]} {label}")
    head = f"{counts.get('samples', 0)} captions in {counts.get('batches', 0)} batches"
    if not text_checked:
        head += " (precomputed table: text-level checks were not run)"
    if not parts:
        return f"{head}; none odd"
    return (f"{head}; odd: " + ", ".join(parts)
            + ". All kept and embedded as decoded; identical captions share one embedding")


class OnlineCaptionEmbeddings:
    """Decodes token ids, embeds unseen captions with a frozen encoder, caches them (LRU, on CPU).

    Repeated captions (epochs, duplicates, the ``accum_freq`` re-calls of one step) cost a dict lookup.
    ``stats`` counts odd captions (see ``CaptionStats``).
    """

    text_checked = True

    def __init__(self, decoder: TokenDecoder, encoder: CaptionEncoder, cache_size: int = 100_000):
        self.decoder = decoder
        self.encoder = encoder
        self.cache_size = cache_size
        self.dim = encoder.dim
        self._cache: "OrderedDict[int, tuple]" = OrderedDict()  # key -> (embedding, text flags)
        self.hits = 0
        self.misses = 0
        self.stats = CaptionStats()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = _token_rows(tokens)
        key_array = token_keys(rows)
        keys = key_array.tolist()
        found = {k: self._cache[k] for k in keys if k in self._cache}
        self.hits += sum(k in found for k in keys)
        self.misses += sum(k not in found for k in keys)
        first_index = {}
        for i, k in enumerate(keys):
            if k not in found:
                first_index.setdefault(k, i)
        if first_index:
            texts = self.decoder(tokens[list(first_index.values())])
            fresh = self.encoder.encode(texts).float().cpu()
            for k, emb, text in zip(first_index, fresh, texts):
                found[k] = (emb, text_flags(text))
                self._remember(k, found[k])
        for k in found:
            if k in self._cache:
                self._cache.move_to_end(k)
        flags = self.decoder.token_flags(rows) | np.fromiter((found[k][1] for k in keys), np.int64, len(keys))
        self.stats.observe(key_array, flags)
        return torch.stack([found[k][0] for k in keys]).to(tokens.device)

    def _remember(self, key, entry):
        if self.cache_size <= 0:
            return
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


class TableCaptionEmbeddings:
    """Looks caption embeddings up in a precomputed ``EmbeddingTable`` by token key.

    With a ``decoder`` (for its token-level checks, no decoding) it counts odd captions in ``stats``:
    empty, cut at the context length, duplicates; text-level checks need decoding and are skipped.
    """

    text_checked = False

    def __init__(self, table, decoder: Optional[TokenDecoder] = None):
        self.table = table
        self.dim = table.dim
        self.decoder = decoder
        self.stats = CaptionStats()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = _token_rows(tokens)
        keys = token_keys(rows)
        emb = self.table.lookup(keys)
        flags = self.decoder.token_flags(rows) if self.decoder is not None else np.zeros(len(keys), np.int64)
        self.stats.observe(keys, flags)
        return torch.from_numpy(emb).float().to(tokens.device)
