"""Token ids back to caption text, and the cheap checks that flag odd captions.

The online encoder embeds the text decoded from the batch's token ids, and ``precompute`` embeds the
same decoded text, so both paths agree by construction. ``DECODER_VERSION`` is recorded in every table:
a table whose captions were decoded differently (version 1 dropped every token id 0, which is a real
"!" in SimpleTokenizer's vocabulary) is refused instead of silently disagreeing with the online path.
"""
from typing import List

import numpy as np
import torch

#: Bumped whenever decoding changes the text of some caption (and hence its embedding).
DECODER_VERSION = 2


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


# Odd captions, one bit each (see ``stats.CaptionStats``).
EMPTY = 1          # nothing left after tokenizing (an empty or whitespace-only caption)
NO_WORDS = 2       # no letter or digit: punctuation, symbols or emoji only
NAN_TEXT = 4       # the text "nan": how OpenCLIP reads an empty CSV cell (pandas NaN, then str())
UNDECODABLE = 8    # contains U+FFFD: bytes that were not UTF-8, or a character cut by truncation
CONTEXT_FULL = 16  # the token row is full: the caption was cut at the context length (or fits exactly)
FLAG_NAMES = (("empty", EMPTY), ("no_words", NO_WORDS), ("nan", NAN_TEXT), ("undecodable", UNDECODABLE),
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

    SimpleTokenizer rows are ``[sot, ids..., eot, 0, 0, ...]``: a row is cut at its first end-of-text
    and its leading start-of-text is dropped. Every id in between is kept, 0 included: id 0 is the
    token "!" (padding only ever follows end-of-text). The text comes back lowercased and truncated to
    the context length, which an uncased sentence encoder such as all-MiniLM-L6-v2 does not mind. HF
    tokenizers use their own ``batch_decode`` without special tokens.
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
        return self._decode(torch.as_tensor(tokens).tolist())

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
            if row and row[0] == tok.sot_token_id:
                row = row[1:]
            texts.append(" ".join(tok.decode(row).split()))
        return texts

    def _decode_hf(self, rows):
        texts = self.tokenizer.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


def decoder_or_none(tokenizer):
    """A ``TokenDecoder`` for the tokenizer, or None where its ids cannot be decoded."""
    try:
        return TokenDecoder(tokenizer)
    except TypeError:
        return None
