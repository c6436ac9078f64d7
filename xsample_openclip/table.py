"""On-disk table of caption embeddings keyed by token-id hash (written by ``xsample_openclip.precompute``).

Layout of a table folder:
    meta.json        encoder name, width, dtype, count, tokenizer model and context length
    keys.npy         uint64, sorted: ``token_keys`` of each caption's token ids
    embeddings.npy   [count, width] float16/float32 unit rows, row i belongs to keys[i]; memory-mapped
"""
import json
from pathlib import Path

import numpy as np

META = "meta.json"
KEYS = "keys.npy"
EMBEDDINGS = "embeddings.npy"


class MissingCaptionsError(KeyError):
    """Some batch captions are not in the table: the table was built from other data."""


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
    (Path(path) / META).write_text(json.dumps(meta, indent=2))
