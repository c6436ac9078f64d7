"""Byte-reproducible writers for the three on-disk layouts the demo needs.

- OpenCLIP webdataset training shards: ``train/NNNNNN.tar`` with members ``KEY.jpg`` + ``KEY.txt``, plus
  ``sizes.json`` so the trainer can count samples.
- OpenCLIP CSV (tab-separated ``filepath``/``title``): the trainer's CSV path is bit-reproducible for a seed,
  its webdataset path is not (unseeded sample shuffle), which matters for a fair A/B comparison.
- clip_benchmark ``wds/`` sets: ``DIR/test/0.tar`` + ``DIR/test/nshards.txt``; classification adds
  ``classnames.txt`` and ``zeroshot_classification_templates.txt`` and ``.cls`` members; retrieval adds
  ``dataset_type.txt`` = ``retrieval`` and ``.txt`` members with one caption per line.

Tar members get a fixed mtime, owner and mode, so the same images give the same tar bytes.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

JPEG_QUALITY = 92


def jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class DeterministicTar:
    """A tar file whose bytes depend only on the members added, in order."""

    def __init__(self, path: Path):
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def close(self):
        self._tar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_train_shards(samples, out_dir: Path, shard_size: int) -> list[Path]:
    """``samples``: (key, jpeg, caption) in final order. Returns the shard paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards, sizes = [], {}
    for start in range(0, len(samples), shard_size):
        path = out_dir / f"{len(shards):06d}.tar"
        chunk = samples[start : start + shard_size]
        with DeterministicTar(path) as tar:
            for key, jpeg, caption in chunk:
                tar.add(f"{key}.jpg", jpeg)
                tar.add(f"{key}.txt", caption.encode("utf-8"))
        shards.append(path)
        sizes[path.name] = len(chunk)
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    return shards


def brace_pattern(shards: list[Path]) -> str:
    """OpenCLIP ``--train-data`` pattern, e.g. ``/data/train/{000000..000006}.tar``."""
    first, last = shards[0], shards[-1]
    return str(first.parent / f"{{{first.stem}..{last.stem}}}.tar")


def write_csv_index(rows, images_dir: Path, csv_path: Path):
    """The CSV alone; paths are absolute (OpenCLIP opens them as given), so it is rewritten if the data moves."""
    extra_columns = list(rows[0][3]) if rows else []
    lines = ["\t".join(["filepath", "title", *extra_columns])]
    for key, _, caption, extra in rows:
        lines.append("\t".join([str(images_dir.resolve() / f"{key}.jpg"), caption, *map(str, extra.values())]))
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_test_split(set_dir: Path, members):
    test_dir = set_dir / "test"
    test_dir.mkdir(parents=True, exist_ok=True)
    with DeterministicTar(test_dir / "0.tar") as tar:
        for name, data in members:
            tar.add(name, data)
    (test_dir / "nshards.txt").write_text("1\n")


def write_cb_classification(set_dir: Path, items, classnames, templates):
    """``items``: (key, jpeg, label index). clip_benchmark reads it as ``--dataset wds/<name>``."""
    members = []
    for key, jpeg, label in items:
        members += [(f"{key}.jpg", jpeg), (f"{key}.cls", str(label).encode())]
    _write_test_split(set_dir, members)
    (set_dir / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (set_dir / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")


def write_cb_retrieval(set_dir: Path, items):
    """``items``: (key, jpeg, captions list)."""
    members = []
    for key, jpeg, captions in items:
        members += [(f"{key}.jpg", jpeg), (f"{key}.txt", "\n".join(captions).encode("utf-8"))]
    _write_test_split(set_dir, members)
    (set_dir / "dataset_type.txt").write_text("retrieval\n")
