"""From a batch's token ids (on the host) to unit caption embeddings: online encoder or table lookup.

Both embedders take the loader's CPU token tensor, key it on the host (``keys.token_keys``) and return
float32 embeddings: the online one on its encoder's device (its cache lives there too, so a warm cache
costs no transfer), the table one on the CPU. Neither ever reads a device tensor, so neither makes the
host wait for the device. ``stats`` counts odd captions for the end-of-epoch log line.
"""
from collections import OrderedDict
from typing import List, Optional, Protocol

import numpy as np
import torch

from .decode import TokenDecoder, text_flags
from .keys import token_keys, token_rows
from .stats import CaptionStats


class CaptionEncoder(Protocol):
    """Frozen text encoder: captions to unit embeddings (float32, on ``device``)."""

    name: str
    dim: int
    device: torch.device

    def encode(self, texts: List[str]) -> torch.Tensor: ...


class OnlineCaptionEmbeddings:
    """Decodes token ids, embeds unseen captions with a frozen encoder, caches them (LRU).

    Repeated captions (epochs, duplicates, the ``accum_freq`` re-calls of one step) cost a dict lookup.
    """

    text_checked = True

    def __init__(self, decoder: TokenDecoder, encoder: CaptionEncoder, cache_size: int = 100_000):
        self.decoder = decoder
        self.encoder = encoder
        self.cache_size = cache_size
        self.dim = encoder.dim
        self._cache: "OrderedDict[int, tuple]" = OrderedDict()  # key -> (embedding row, text flags)
        self.hits = 0
        self.misses = 0
        self.stats = CaptionStats()

    def __call__(self, tokens) -> torch.Tensor:
        rows = token_rows(tokens)
        key_array = token_keys(rows)
        keys = key_array.tolist()
        found = {k: self._cache[k] for k in keys if k in self._cache}
        new = {}
        for i, k in enumerate(keys):
            if k not in found:
                new.setdefault(k, i)
        self.misses += sum(k in new for k in keys)
        self.hits += len(keys) - sum(k in new for k in keys)
        if new:
            texts = self.decoder(rows[list(new.values())])
            fresh = self.encoder.encode(texts).float()
            for k, emb, text in zip(new, fresh, texts):
                found[k] = (emb, text_flags(text))
                self._remember(k, found[k])
        for k in found:
            if k in self._cache:
                self._cache.move_to_end(k)
        flags = self.decoder.token_flags(rows) | np.fromiter((found[k][1] for k in keys), np.int64, len(keys))
        self.stats.observe(key_array, flags)
        return torch.stack([found[k][0] for k in keys])

    def _remember(self, key, entry):
        if self.cache_size <= 0:
            return
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


class TableCaptionEmbeddings:
    """Looks caption embeddings up in a precomputed ``EmbeddingTable`` by token key (on the host).

    With a ``decoder`` (for its token-level checks, no decoding) it counts odd captions in ``stats``:
    empty, cut at the context length, duplicates; text-level checks need decoding and are skipped.
    """

    text_checked = False

    def __init__(self, table, decoder: Optional[TokenDecoder] = None):
        self.table = table
        self.dim = table.dim
        self.decoder = decoder
        self.stats = CaptionStats()

    def __call__(self, tokens) -> torch.Tensor:
        rows = token_rows(tokens)
        keys = token_keys(rows)
        emb = self.table.lookup(keys)
        flags = self.decoder.token_flags(rows) if self.decoder is not None else np.zeros(len(keys), np.int64)
        self.stats.observe(keys, flags)
        return torch.from_numpy(emb)
