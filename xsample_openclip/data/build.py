"""Build a data set once, atomically, and reuse it: the cache every demo data set goes through.

A build writes into a hidden sibling folder and is renamed into place only when complete, with a
``manifest.json`` whose ``cache_key`` records everything that changes the bytes; a later call with
the same key reuses the folder (its CSV's absolute paths are fixed if the folder moved), a different
key rebuilds it, and a non-empty folder without a manifest is never overwritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from .demo_data import MANIFEST


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((Path(root) / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def relocate_csv(csv_path: Path, images_dir: Path):
    """The CSV holds absolute paths; fix them if the data folder was moved or copied."""
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    if len(lines) < 2 or lines[1].startswith(str(images_dir.resolve()) + os.sep):
        return
    fixed = [lines[0]]
    for line in lines[1:]:
        path, rest = line.split("\t", 1)
        fixed.append(f"{images_dir.resolve() / Path(path).name}\t{rest}")
    csv_path.write_text("\n".join(fixed) + "\n", encoding="utf-8")


def _load(root: Path, manifest: dict, load):
    data = load(root, manifest)
    if getattr(data, "train_csv", None) is not None:
        relocate_csv(data.train_csv, root / "train" / "images")
    return data


def cached(root: Path, key: dict, load):
    manifest = read_manifest(root)
    if manifest is None or manifest.get("cache_key") != key:
        return None
    if not all((root / rel).is_file() for rel in manifest["files"]):
        return None
    return _load(root, manifest, load)


def build_cached(out_dir, key: dict, write: Callable[[Path, Path], dict], load: Callable[[Path, dict], object],
                 force: bool = False):
    """``write(build_dir, final_root)`` returns the manifest (without ``cache_key``); ``load(root,
    manifest)`` returns the data description."""
    root = Path(out_dir).resolve()
    if not force:
        found = cached(root, key, load)
        if found is not None:
            return found
    if root.exists() and any(root.iterdir()) and read_manifest(root) is None:
        raise FileExistsError(f"{root} is not empty and holds no {MANIFEST}; refusing to overwrite it")
    build_dir = root.parent / f".{root.name}.building-{os.getpid()}"
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    try:
        manifest = dict(write(build_dir, root), cache_key=key)
        (build_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if not force:
            finished_meanwhile = cached(root, key, load)  # another process built the same data
            if finished_meanwhile is not None:
                return finished_meanwhile
        if root.exists():
            shutil.rmtree(root)
        build_dir.rename(root)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return _load(root, manifest, load)
