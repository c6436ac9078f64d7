"""From a batch's token ids to unit caption embeddings: the side data of the X-Sample target graph.

OpenCLIP's loader hands the loss only token ids, so captions are recovered from them: either decoded
back to text and embedded by a frozen sentence encoder (``OnlineCaptionEmbeddings``), or looked up in a
table precomputed from the same token ids (``TableCaptionEmbeddings``). Both are keyed by
``token_keys``, so the data loader stays unchanged and a table is an exact cache of the online path.
"""
import hashlib
from collections import OrderedDict
from typing import List, Protocol

import numpy as np
import torch


def token_keys(tokens) -> np.ndarray:
    """64-bit keys of token-id rows (blake2b over int32 ids); identical captions share a key."""
    rows = np.ascontiguousarray(torch.as_tensor(tokens).cpu().numpy().astype(np.int32, copy=False))
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in rows),
        dtype=np.uint64, count=len(rows),
    )


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


class OnlineCaptionEmbeddings:
    """Decodes token ids, embeds unseen captions with a frozen encoder, caches them (LRU, on CPU).

    Repeated captions (epochs, duplicates, the ``accum_freq`` re-calls of one step) cost a dict lookup.
    """

    def __init__(self, decoder: TokenDecoder, encoder: CaptionEncoder, cache_size: int = 100_000):
        self.decoder = decoder
        self.encoder = encoder
        self.cache_size = cache_size
        self.dim = encoder.dim
        self._cache: "OrderedDict[int, torch.Tensor]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        keys = token_keys(tokens).tolist()
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
            for k, emb in zip(first_index, fresh):
                found[k] = emb
                self._remember(k, emb)
        for k in found:
            if k in self._cache:
                self._cache.move_to_end(k)
        return torch.stack([found[k] for k in keys]).to(tokens.device)

    def _remember(self, key, emb):
        if self.cache_size <= 0:
            return
        self._cache[key] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


class TableCaptionEmbeddings:
    """Looks caption embeddings up in a precomputed ``EmbeddingTable`` by token key."""

    def __init__(self, table):
        self.table = table
        self.dim = table.dim

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.table.lookup(token_keys(tokens))
        return torch.from_numpy(emb).float().to(tokens.device)
