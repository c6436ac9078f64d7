"""On-disk table of caption embeddings keyed by token-id hash (written by ``xsample_openclip.precompute``),
and the checks that a table fits a training run.

Layout of a table folder:
    meta.json        encoder name, width, dtype, count, tokenizer, context length, decoder version
    keys.npy         uint64, sorted: ``keys.token_keys`` of each caption's token ids
    embeddings.npy   [count, width] float16/float32 unit rows, row i belongs to keys[i]; memory-mapped
"""
import json
from pathlib import Path
from typing import List, Optional

import numpy as np

from .decode import DECODER_VERSION

META = "meta.json"
KEYS = "keys.npy"
EMBEDDINGS = "embeddings.npy"


class MissingCaptionsError(KeyError):
    """Some batch captions are not in the table: the table was built from other data.

    A ``KeyError`` (a lookup that found nothing), with its message shown as written, not quoted as a key.
    """

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def rebuild_hint(model="MODEL", encoder=None, out="DIR"):
    flag = f" --encoder {encoder}" if encoder else ""
    return (f"rebuild it with `python -m xsample_openclip.precompute --model {model} --train-data DATA{flag} "
            f"--out {out}`")


class EmbeddingTable:
    def __init__(self, path):
        self.path = Path(path)
        for name in (META, KEYS, EMBEDDINGS):
            if not (self.path / name).is_file():
                raise FileNotFoundError(
                    f"--xsample-embeddings {str(self.path)!r} is not a caption-embedding table "
                    f"(missing {name}); build one with `python -m xsample_openclip.precompute "
                    f"--model MODEL --train-data DATA --out {self.path}`")
        self.meta = json.loads((self.path / META).read_text())
        self.keys = np.load(self.path / KEYS, mmap_mode="r")
        self.embeddings = np.load(self.path / EMBEDDINGS, mmap_mode="r")
        if self.embeddings.shape[0] != self.keys.shape[0] or self.keys.shape[0] != self.meta.get("count"):
            raise ValueError(
                f"caption-embedding table {self.path} is incomplete: {self.keys.shape[0]} keys, "
                f"{self.embeddings.shape[0]} embeddings, meta says {self.meta.get('count')}; "
                "re-run xsample_openclip.precompute to finish it")
        self.dim = int(self.embeddings.shape[1])
        if self.meta.get("dim") is not None and int(self.meta["dim"]) != self.dim:
            raise ValueError(
                f"caption-embedding table {self.path} is inconsistent: meta.json says width "
                f"{self.meta['dim']} but embeddings.npy rows have width {self.dim}; rebuild it with "
                "`python -m xsample_openclip.precompute`")

    def __len__(self):
        return int(self.keys.shape[0])

    @property
    def decoder_version(self) -> int:
        return int(self.meta.get("decoder_version", 1))

    def find(self, keys: np.ndarray):
        """Row index of each key and a mask of which keys are present."""
        keys = np.asarray(keys, dtype=np.uint64)
        if len(self.keys) == 0:
            return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        idx = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        return idx, self.keys[idx] == keys

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        idx, present = self.find(keys)
        if not present.all():
            raise MissingCaptionsError(
                f"{int((~present).sum())} of {len(keys)} captions in this batch are not in the "
                f"caption-embedding table {self.path} ({len(self)} captions, built for model "
                f"{self.meta.get('model')!r}); rebuild it over this training data with "
                "`python -m xsample_openclip.precompute`, with the same --model")
        emb = np.asarray(self.embeddings[idx], dtype=np.float32)
        if not np.isfinite(emb).all():
            bad = int((~np.isfinite(emb).all(axis=1)).sum())
            raise ValueError(
                f"{bad} of {len(keys)} caption embeddings in this batch from table {self.path} are not "
                "finite (NaN/inf): the table is corrupt; rebuild it with `python -m xsample_openclip.precompute`")
        return emb

    def bad_rows(self, sample: int = 4096, tol: float = 1e-2):
        """Of up to ``sample`` evenly spaced rows: how many were checked, and how many are not finite
        unit vectors (what every encoder here writes; float16 rounding stays far inside ``tol``)."""
        if len(self) == 0:
            return 0, 0
        idx = np.unique(np.linspace(0, len(self) - 1, num=min(sample, len(self))).astype(np.int64))
        rows = np.asarray(self.embeddings[idx], dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            norms = np.linalg.norm(rows, axis=1)
        bad = ~np.isfinite(rows).all(axis=1) | ~(np.abs(norms - 1.0) <= tol)
        return len(idx), int(bad.sum())


def write_table(path, keys: np.ndarray, embeddings: np.ndarray, meta: dict) -> EmbeddingTable:
    """Write a small table in one go (keys are sorted here). Large tables: see ``precompute``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    order = np.argsort(keys, kind="stable")
    np.save(path / KEYS, np.asarray(keys, dtype=np.uint64)[order])
    np.save(path / EMBEDDINGS, np.asarray(embeddings)[order])
    write_meta(path, meta, count=len(keys), dim=embeddings.shape[1], dtype=embeddings.dtype)
    return EmbeddingTable(path)


def write_meta(path, meta: dict, count: int, dim: int, dtype) -> None:
    """Written last: a table folder with meta.json is complete."""
    meta = dict(meta, count=int(count), dim=int(dim), dtype=str(np.dtype(dtype)))
    meta.setdefault("decoder_version", DECODER_VERSION)
    (Path(path) / META).write_text(json.dumps(meta, indent=2))


def table_meta(tokenizer, encoder_name: str, model: str, **extra) -> dict:
    """What a table records about how its keys and embeddings were made."""
    return {"encoder": encoder_name, "model": model, "tokenizer": type(tokenizer).__name__,
            "context_length": int(getattr(tokenizer, "context_length", 0) or 0),
            "decoder_version": DECODER_VERSION, **extra}


# --- does a table fit this run? ------------------------------------------------------------------

def fit_problems(table: EmbeddingTable, model: str, tokenizer=None,
                 encoder: Optional[tuple] = None, encoder_flag: Optional[str] = None) -> List[str]:
    """Refusals (each naming the fix) when ``table`` cannot serve a run of ``model``.

    - decoded with another decoder version (its embeddings disagree with the online path);
    - built with another tokenizer or context length (keys are hashes of token ids: none could match);
    - ``encoder`` (name, width) given explicitly by ``encoder_flag`` and not the table's;
    - up to 4096 evenly spaced rows are not finite unit vectors.
    """
    meta, path, problems = table.meta, table.path, []
    if table.decoder_version != DECODER_VERSION:
        problems.append(
            f"--xsample-embeddings {path} was built by an older xsample-openclip (caption decoder version "
            f"{table.decoder_version}, now {DECODER_VERSION}: version 1 dropped every '!' token), so its "
            f"embeddings differ from what the online encoder computes for captions with '!'; "
            f"{rebuild_hint(model, out=path)}")
    if tokenizer is not None:
        kind = type(tokenizer).__name__
        context = int(getattr(tokenizer, "context_length", 0) or 0)
        built_kind, built_context = meta.get("tokenizer"), meta.get("context_length")
        if (built_kind and built_kind != kind) or (built_context and int(built_context) != context):
            problems.append(
                f"--xsample-embeddings {path} was built for model {meta.get('model')!r} ({built_kind}, "
                f"context length {built_context}), but --model {model} tokenizes with {kind}, context "
                f"length {context}: none of its {len(table)} keys can match a training caption; "
                f"{rebuild_hint(model)}")
    if encoder is not None:
        name, width = encoder
        built = meta.get("encoder")
        if built != name or (width and int(width) != table.dim):
            problems.append(
                f"--xsample-encoder {encoder_flag} ({name}, width {width}) is not the encoder "
                f"--xsample-embeddings {path} was built with ({built}, width {table.dim}); drop "
                f"--xsample-encoder to use the table's encoder, or {rebuild_hint(model, encoder_flag)}")
    checked, bad = table.bad_rows()
    if bad:
        problems.append(f"--xsample-embeddings {path}: {bad} of {checked} checked rows are not finite unit "
                        f"vectors (NaN, inf or wrong norm): the table is corrupt; {rebuild_hint(model)}")
    return problems


def missing_captions(table: EmbeddingTable, captions, tokenizer, chunk: int = 4096) -> dict:
    """How many of ``captions`` (and of their distinct token rows) the table lacks."""
    from .keys import token_keys

    distinct, missing = set(), set()
    for start in range(0, len(captions), chunk):
        keys = token_keys(tokenizer(captions[start:start + chunk]))
        _, present = table.find(keys)
        distinct.update(keys.tolist())
        missing.update(keys[~present].tolist())
    return {"captions": len(captions), "distinct": len(distinct), "missing_distinct": len(missing)}
