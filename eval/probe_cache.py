"""Linear-probe features and fitted probes on disk, keyed by what they are computed from.

A feature file is keyed by the checkpoint *content* (the identity ``checkpoints`` records for the run in
``runs.json``, the same key that decides whether zero-shot results are reused), the model, the image split
(for a clip_benchmark ``wds/`` set the SHA-256 of its shards; for a folder dataset such as ImageNet a
SHA-256 of its file listing: every file's relative path, size and modification time, which is cheap next
to encoding the images and notices a folder edited in place), and the featurizer settings. A checkpoint overwritten in place therefore
gets new features even if its run's folder survived, and two sets sharing the same training images (the
background variants of one group) share one file. A fitted probe is keyed by its training features' key
and the probe settings, so the variants of a group train one probe and only score it on their own tests.
"""
import hashlib
import json
import logging
import os

import torch

log = logging.getLogger(__name__)


def listing_digest(root) -> str:
    """SHA-256 over (relative path, size, mtime) of every file below ``root``, in sorted order."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            path = os.path.join(folder, name)
            st = os.stat(path)
            entries.append(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def split_identity(cb_dataset, root, split):
    """What identifies the images of one split: shard hashes for ``wds/`` sets, else the folder's listing."""
    if not cb_dataset.startswith("wds/"):
        return {"dataset": cb_dataset, "split": split, "listing": listing_digest(root)}
    folder = os.path.join(root, split)
    with open(os.path.join(folder, "nshards.txt")) as f:
        nshards = int(f.read().strip())
    digests = []
    for i in range(nshards):
        digest = hashlib.sha256()
        with open(os.path.join(folder, f"{i}.tar"), "rb") as f:
            for chunk in iter(lambda: f.read(16 << 20), b""):
                digest.update(chunk)
        digests.append(digest.hexdigest())
    return {"dataset": "wds", "shards": digests}


def key_of(parts):
    """A file-name-safe digest of a JSON-able description."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


class ProbeCache:
    """``folder/features-<key>.pt`` ({features, targets, parts}) and ``folder/probe-<key>.pt``."""

    def __init__(self, folder):
        self.folder = folder

    def _path(self, kind, parts):
        return os.path.join(self.folder, f"{kind}-{key_of(parts)}.pt")

    def _load(self, kind, parts):
        path = self._path(kind, parts)
        if not os.path.isfile(path):
            return None
        stored = torch.load(path, map_location="cpu", weights_only=False)
        if stored.get("parts") != parts:  # a digest collision or a hand-copied file: recompute, loudly
            log.warning("%s holds %s for other inputs; recomputing", path, kind)
            return None
        return stored

    def _save(self, kind, parts, payload):
        os.makedirs(self.folder, exist_ok=True)
        path = self._path(kind, parts)
        torch.save({**payload, "parts": parts}, path + ".tmp")
        os.replace(path + ".tmp", path)  # never a half-written cache file under the final name

    def features(self, parts, compute):
        """(features, targets) for ``parts``, from disk or from ``compute()`` (then saved)."""
        stored = self._load("features", parts)
        if stored is not None:
            return stored["features"], stored["targets"]
        features, targets = compute()
        self._save("features", parts, {"features": features, "targets": targets})
        return features, targets

    def probe(self, parts, compute):
        """A fitted probe's state for ``parts``, from disk or from ``compute()`` (then saved)."""
        stored = self._load("probe", parts)
        if stored is not None:
            return stored["state"]
        state = compute()
        self._save("probe", parts, {"state": state})
        return state
