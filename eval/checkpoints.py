"""Which checkpoint content a run's results under ``--out`` were computed from (the record ``runs.json``).

Results, the shared ImageNet classifier and the linear-probe features of a run all derive from its
checkpoint. Matched by run name and path alone, a checkpoint overwritten in place (``epoch_latest.pt``,
a re-trained run) would keep its old numbers; so each run's record holds the identity of the checkpoint
content, and a run whose content changed is evaluated again.

Identity of a checkpoint file: the SHA-256 of its bytes, together with the (size, mtime_ns) it was
computed for. The hash is recomputed only when size or mtime_ns differ from the recorded ones: a full
hash reads the whole file (about a second per GB; training checkpoints with optimizer state reach tens
of GB), a stat costs nothing, and writing a file always moves its mtime, so re-running a comparison on
unchanged files reads none of them. A changed stat with the same hash (a copy, a ``touch``) keeps the
results. What goes unnoticed: a file rewritten with the same size and its mtime set back (``touch -d``,
``cp -p``/``rsync -t`` of another file with the very same timestamp), or rewritten within one tick of
the file system's clock (milliseconds; seconds on some network file systems). A pretrained tag (e.g.
``openai``) is its own identity.

Rules for a run name already in ``runs.json`` (``check``):
- same model and same content, at the recorded path or another one (moved logs): results reused;
- same model and path, other content: the run's earlier files are dropped and it is evaluated again;
- another model, or another path holding other content: refused, as that is another experiment.
"""
import datetime
import hashlib
import json
import logging
import os

from .specs import SetupError

log = logging.getLogger(__name__)

_CHUNK = 16 << 20
_SLOW_HASH_BYTES = 1 << 30  # log before hashing files this large


def location(checkpoint):
    """How a checkpoint is recorded: the absolute path of a file, else the pretrained tag as given."""
    return os.path.abspath(checkpoint) if os.path.isfile(checkpoint) else checkpoint


def identify(checkpoint, known=None):
    """The identity of ``checkpoint``'s content; ``known`` (its last identity at the same path) spares the
    hash when the file's size and mtime_ns still match it."""
    if not os.path.isfile(checkpoint):
        return {"content": f"pretrained:{checkpoint}"}
    with open(checkpoint, "rb") as f:
        stat = os.fstat(f.fileno())  # the stat and the bytes hashed are those of one and the same file
        if known and "content" in known and (known.get("size"), known.get("mtime_ns")) == (
                stat.st_size, stat.st_mtime_ns):
            return dict(known)
        if stat.st_size >= _SLOW_HASH_BYTES:
            log.info("hashing %s (%.1f GB) to identify its content", checkpoint, stat.st_size / 1e9)
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "content": f"sha256:{digest.hexdigest()}"}


def changed_since(identity, checkpoint):
    """Whether the file's size or mtime moved away from ``identity`` (False for a pretrained tag)."""
    if "mtime_ns" not in identity or not os.path.isfile(checkpoint):
        return False
    stat = os.stat(checkpoint)
    return (stat.st_size, stat.st_mtime_ns) != (identity["size"], identity["mtime_ns"])


def describe(identity):
    """A short human-readable identity, e.g. ``sha256 1f3a9c0b2d4e…, 12.3 MB, modified 2025-01-02 03:04:05``."""
    kind, _, value = identity.get("content", "unknown:").partition(":")
    if kind == "pretrained":
        return f"pretrained tag {value!r}"
    parts = [f"{kind} {value[:12]}…"]
    if "size" in identity:
        modified = datetime.datetime.fromtimestamp(identity["mtime_ns"] / 1e9).isoformat(" ", "seconds")
        parts += [f"{identity['size'] / 1e6:.1f} MB", f"modified {modified}"]
    return ", ".join(parts)


def _path(out):
    return os.path.join(out, "runs.json")


def load(out):
    """{run name: {"model", "checkpoint", "identity"}} as recorded in ``out`` (empty if none)."""
    if not os.path.isfile(_path(out)):
        return {}
    with open(_path(out)) as f:
        return json.load(f)


def save(out, records):
    """Write the records (after the files of the runs they replace have been dropped)."""
    with open(_path(out), "w") as f:
        json.dump(records, f, indent=1)


def _stale_reason(out, name, old, new):
    """Why ``old``'s files cannot serve ``new`` (None if they can); SetupError if it is another experiment."""
    if old is None:
        return f"{out} held files of run {name!r} without a record of the checkpoint they came from"
    old_content = old.get("identity", {}).get("content")
    if old["model"] != new["model"] or (old["checkpoint"] != new["checkpoint"]
                                        and old_content != new["identity"]["content"]):
        raise SetupError(f"{out} already holds results of run {name!r} for {old['checkpoint']} (model "
                         f"{old['model']}), not for {new['checkpoint']} (model {new['model']}) with its "
                         "content; use another --out or another run name")
    if old_content is None:
        return f"its results in {out} have no record of the checkpoint content (written by an older eval.compare)"
    if old_content != new["identity"]["content"]:
        return (f"checkpoint {new['checkpoint']} changed since its results were computed "
                f"(was {describe(old['identity'])}; now {describe(new['identity'])})")
    return None


def check(out, model, runs):
    """The new records for ``runs`` and, for each run whose earlier files in ``out`` must be dropped, why.

    Hashes a checkpoint only when it is new here or its size/mtime changed. Raises SetupError for a run
    name that holds results of another experiment. Writes nothing.
    """
    records, stale = load(out), []
    for run in runs:
        old = records.get(run.name)
        path = location(run.checkpoint)
        known = old.get("identity") if old and old["checkpoint"] == path else None
        new = {"model": model, "checkpoint": path, "identity": identify(run.checkpoint, known)}
        reason = _stale_reason(out, run.name, old, new)
        if reason:
            stale.append((run, reason))
        records[run.name] = new
    return records, stale
