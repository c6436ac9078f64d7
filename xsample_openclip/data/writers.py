"""The one writer of the on-disk layouts the project uses (demo, benchmark and tests all call it).

- OpenCLIP webdataset training shards: ``DIR/NNNNNN.tar`` with members ``KEY.jpg`` + ``KEY.txt``, plus
  ``sizes.json`` so the trainer can count samples (``write_webdataset``; ``brace_pattern`` spells the
  ``--train-data`` pattern).
- OpenCLIP CSV: tab-separated ``filepath``/``title`` (plus any extra columns) and the images it points
  to (``write_csv``). The trainer's CSV path is bit-reproducible for a seed, its webdataset path is not
  (unseeded sample shuffle), which matters for a fair A/B comparison.
- clip_benchmark ``wds/`` sets: ``DIR/<split>/0.tar`` + ``DIR/<split>/nshards.txt``; classification adds
  ``classnames.txt``, ``zeroshot_classification_templates.txt`` and ``.cls`` members; retrieval adds
  ``dataset_type.txt`` = ``retrieval`` and ``.txt`` members with one caption per line.

Tar members get a fixed mtime, owner and mode, so the same samples give the same bytes.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Tuple

JPEG_QUALITY = 92


def jpeg_bytes(image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class DeterministicTar:
    """A tar file whose bytes depend only on the members added, in order."""

    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
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


def write_webdataset(out_dir, samples: Sequence[Tuple[str, bytes, str]], shard_size: int,
                     image_ext: str = "jpg") -> list:
    """``samples``: (key, image bytes, caption) in final order. Returns the shard paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards, sizes = [], {}
    for start in range(0, len(samples), shard_size):
        path = out_dir / f"{len(shards):06d}.tar"
        chunk = samples[start: start + shard_size]
        with DeterministicTar(path) as tar:
            for key, image, caption in chunk:
                tar.add(f"{key}.{image_ext}", image)
                tar.add(f"{key}.txt", caption.encode("utf-8") if isinstance(caption, str) else caption)
        shards.append(path)
        sizes[path.name] = len(chunk)
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    return shards


def write_text_shards(out_dir, captions: Sequence[str], shards: int = 4) -> str:
    """Caption-only webdataset shards ``out_dir/NNNNNN.tar`` (``KEY.txt`` members, no images), for
    caption tools (precompute, benchmarks); returns their brace pattern."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    per = -(-len(captions) // shards)
    paths = []
    for k in range(shards):
        paths.append(Path(out_dir) / f"{k:06d}.tar")
        with DeterministicTar(paths[-1]) as tar:
            for i in range(k * per, min((k + 1) * per, len(captions))):
                tar.add(f"{i:08d}.txt", captions[i].encode("utf-8"))
    return brace_pattern(paths)


def brace_pattern(shards) -> str:
    """OpenCLIP ``--train-data`` pattern, e.g. ``/data/train/{000000..000006}.tar``."""
    first, last = Path(shards[0]), Path(shards[-1])
    return str(first.parent / f"{{{first.stem}..{last.stem}}}.tar")


def write_csv(csv_path, samples: Iterable[Tuple], images_dir, image_ext: str = "jpg",
              extra_columns: Sequence[str] = ()) -> Path:
    """OpenCLIP's CSV: ``samples`` are (key, image bytes, caption[, {column: value}]); images are written
    to ``images_dir`` and the CSV holds their absolute paths (OpenCLIP opens them as given)."""
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(["filepath", "title", *extra_columns])]
    for key, image, caption, *extra in samples:
        path = images_dir.resolve() / f"{key}.{image_ext}"
        if image is not None:
            path.write_bytes(image)
        values = extra[0] if extra else {}
        lines.append("\t".join([str(path), caption, *(str(values.get(c, "")) for c in extra_columns)]))
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path


def _write_split(set_dir: Path, split: str, members):
    split_dir = Path(set_dir) / split
    with DeterministicTar(split_dir / "0.tar") as tar:
        for name, data in members:
            tar.add(name, data)
    (split_dir / "nshards.txt").write_text("1\n")


def write_cb_classification(set_dir, items: Iterable[Tuple[str, bytes, int]], classnames: Sequence[str],
                            templates: Sequence[str], split: str = "test", image_ext: str = "jpg") -> Path:
    """``items``: (key, image bytes, label index). clip_benchmark reads it as ``--dataset wds/<name>``."""
    members = []
    for key, image, label in items:
        members += [(f"{key}.{image_ext}", image), (f"{key}.cls", str(label).encode())]
    _write_split(Path(set_dir), split, members)
    (Path(set_dir) / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (Path(set_dir) / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return Path(set_dir)


def write_cb_retrieval(set_dir, items: Iterable[Tuple[str, bytes, Sequence[str]]], split: str = "test",
                       image_ext: str = "jpg") -> Path:
    """``items``: (key, image bytes, captions list)."""
    members = []
    for key, image, captions in items:
        members += [(f"{key}.{image_ext}", image), (f"{key}.txt", "\n".join(captions).encode("utf-8"))]
    _write_split(Path(set_dir), split, members)
    (Path(set_dir) / "dataset_type.txt").write_text("retrieval\n")
    return Path(set_dir)


def write_cb_group(root, sets: Mapping[str, Tuple], classnames, templates, **kw) -> Path:
    """Several classification sets side by side (``root/<name>/``), e.g. one per background variant."""
    for name, items in sets.items():
        write_cb_classification(Path(root) / name, items, classnames, templates, **kw)
    return Path(root)
