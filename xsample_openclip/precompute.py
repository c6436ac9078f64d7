"""Precompute the caption-embedding table for ``--xsample-embeddings``.

    python -m xsample_openclip.precompute --model MODEL --train-data DATA --out TABLE_DIR

Captions are read exactly as OpenCLIP's loader reads them (CSV column or webdataset ``.txt``
members), tokenized with the model's own tokenizer, keyed by ``token_keys`` and decoded back, so the
table holds what the online encoder would compute: training with the table is training with the
online encoder, minus its cost. The work is streamed: captions are deduplicated by key while reading,
embeddings are written into a memory-mapped ``.npy`` in key order, progress is saved every chunk so
an interrupted run resumes where it stopped, and ``meta.json`` is written last.
``--check`` reports how many of a dataset's captions a finished table is missing.
"""
import argparse
import json
import logging
import sys
import tarfile
from pathlib import Path
from typing import Iterator, List

import numpy as np
from tqdm import tqdm

from .captions import TokenDecoder, token_keys
from .table import EMBEDDINGS, KEYS, EmbeddingTable, write_meta

PROGRESS = "progress.json"
READ_CHUNK = 4096


def expand_sources(train_data: str) -> List[str]:
    """OpenCLIP's ``--train-data`` syntax: ``::`` between sources, braces inside each."""
    import braceexpand

    return [p for src in train_data.split("::") for p in braceexpand.braceexpand(src)]


def iter_captions(train_data, dataset_type="auto", caption_key="title", separator="\t") -> Iterator[str]:
    for source in expand_sources(train_data):
        kind = dataset_type
        if kind == "auto":
            kind = {"csv": "csv", "tsv": "csv", "tar": "webdataset"}.get(source.rsplit(".", 1)[-1])
        if kind == "csv":
            import pandas as pd

            for chunk in pd.read_csv(source, sep=separator, usecols=[caption_key], chunksize=READ_CHUNK):
                yield from (str(c) for c in chunk[caption_key])
        elif kind == "webdataset":
            with tarfile.open(source, "r|*") as tar:
                for member in tar:
                    if member.isfile() and member.name.rsplit(".", 1)[-1] == "txt":
                        yield tar.extractfile(member).read().decode("utf-8")
        else:
            raise ValueError(f"cannot tell the dataset type of {source!r}; pass --dataset-type csv|webdataset")


def unique_captions(captions: Iterator[str], tokenizer, desc="reading captions"):
    """Key -> decoded text of every distinct caption, and how many captions were read."""
    decoder = TokenDecoder(tokenizer)
    found, total = {}, 0
    with tqdm(desc=desc, unit=" captions") as bar:
        while True:
            chunk = [c for _, c in zip(range(READ_CHUNK), captions)]
            if not chunk:
                break
            tokens = tokenizer(chunk)
            keys = token_keys(tokens)
            new = [i for i, k in enumerate(keys.tolist()) if k not in found]
            for i, text in zip(new, decoder(tokens[new]) if new else []):
                found.setdefault(int(keys[i]), text)
            total += len(chunk)
            bar.update(len(chunk))
    return found, total


def build_table(out, captions, tokenizer, encoder, model_name, dtype="float16", chunk=1024):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found, total = unique_captions(captions, tokenizer)
    keys = np.array(sorted(found), dtype=np.uint64)
    texts = [found[int(k)] for k in keys]
    progress_file = out / PROGRESS
    done = 0
    if progress_file.is_file() and (out / KEYS).is_file() and np.array_equal(np.load(out / KEYS), keys):
        done = json.loads(progress_file.read_text())["done"]
        emb = np.load(out / EMBEDDINGS, mmap_mode="r+")
        logging.info(f"resuming: {done}/{len(keys)} captions already embedded")
    else:
        np.save(out / KEYS, keys)
        emb = np.lib.format.open_memmap(out / EMBEDDINGS, mode="w+", dtype=dtype, shape=(len(keys), encoder.dim))
        progress_file.write_text(json.dumps({"done": 0}))
    with tqdm(total=len(keys), initial=done, desc="embedding captions", unit=" captions") as bar:
        for start in range(done, len(keys), chunk):
            batch = texts[start:start + chunk]
            emb[start:start + len(batch)] = encoder.encode(batch).cpu().numpy().astype(dtype)
            emb.flush()
            progress_file.write_text(json.dumps({"done": start + len(batch)}))
            bar.update(len(batch))
    del emb
    meta = {"encoder": encoder.name, "model": model_name, "tokenizer": type(tokenizer).__name__,
            "context_length": int(getattr(tokenizer, "context_length", 0) or 0), "captions_read": total}
    write_meta(out, meta, count=len(keys), dim=encoder.dim, dtype=dtype)
    progress_file.unlink()
    size = (out / EMBEDDINGS).stat().st_size + (out / KEYS).stat().st_size
    logging.info(f"wrote {len(keys)} distinct captions (of {total} read) to {out}: {size / 2**20:.1f} MiB")
    return EmbeddingTable(out)


def check_table(table: EmbeddingTable, captions, tokenizer):
    """How many captions of the data are missing from the table."""
    found, total = unique_captions(captions, tokenizer, desc="checking captions")
    _, present = table.find(np.array(list(found), dtype=np.uint64))
    return {"captions": total, "distinct": len(found), "missing_distinct": int((~present).sum())}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.precompute", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="OpenCLIP model name whose tokenizer training uses")
    p.add_argument("--train-data", required=True, help="same value as open_clip_train's --train-data")
    p.add_argument("--dataset-type", default="auto", choices=["auto", "csv", "webdataset"])
    p.add_argument("--csv-caption-key", default="title")
    p.add_argument("--csv-separator", default="\t")
    p.add_argument("--force-context-length", type=int, default=None)
    p.add_argument("--out", required=True, help="table folder (pass it to --xsample-embeddings)")
    p.add_argument("--encoder", default="minilm", help="same meaning as --xsample-encoder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--check", action="store_true", help="only report captions missing from --out")
    return p.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from open_clip import get_tokenizer

    from xsample_openclip import model_configs

    model_configs.register()
    tokenizer = get_tokenizer(args.model, context_length=args.force_context_length)
    captions = iter_captions(args.train_data, args.dataset_type, args.csv_caption_key, args.csv_separator)
    if args.check:
        report = check_table(EmbeddingTable(args.out), captions, tokenizer)
        print(json.dumps(report))
        return 1 if report["missing_distinct"] else 0
    from .encoders import SentenceEncoder

    build_table(args.out, captions, tokenizer, SentenceEncoder(args.encoder, device=args.device),
                args.model, dtype=args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
