"""What an evaluation's numbers depend on besides the checkpoint: the evaluated set's content and the task's
settings, recorded in each result JSON so that a result is reused only for the same inputs.

A result file is named by run, set name and task (``runner``), and the checkpoint content is checked per
run (``checkpoints``). The name alone cannot tell a set rebuilt in place (a ``--wds`` folder that now holds
other images or labels, a demo set written again at another scale) or a changed setting (the probe's
``val_proportion``) from the one evaluated before; so each result records ``inputs``:

- ``set``: the content key the linear-probe feature cache computes (``probe_cache.split_identity``: the
  SHA-256 of a ``wds/`` split's shards, the listing of a folder dataset) for the test split and, for the
  probe, the split it trains on; for ``wds/`` sets also the SHA-256 of the files that name the classes and
  prompts (``classnames.txt``, its templates, ``dataset_type.txt``); the class names passed in (IN-9's);
- ``settings``: what else changes the numbers: mixed precision, retrieval's recall@k, the probe's settings.

A result whose recorded inputs differ from today's, or which records none (written by an earlier version),
is recomputed; ``difference`` says why, for the log and the report's notes.
"""
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Tuple

from .probe_cache import split_identity
from .specs import LINEAR_PROBE, ZEROSHOT_RETRIEVAL

KEY = "inputs"

#: The files of a clip_benchmark ``wds/`` set, beside its splits, that change what its labels mean.
_WDS_META = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")


@dataclass(frozen=True)
class TaskSettings:
    """The settings of a comparison that change some task's numbers."""

    amp: bool
    recall_k: Tuple[int, ...]
    probe: object  # linear_probe.ProbeSettings

    def of(self, task):
        """The settings ``task``'s numbers depend on."""
        settings = {"amp": bool(self.amp)}
        if task == ZEROSHOT_RETRIEVAL:
            settings["recall_k"] = [int(k) for k in self.recall_k]
        if task == LINEAR_PROBE:
            settings["probe"] = asdict(self.probe)
        return settings


def _file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class SetIdentities:
    """The content key of each split, computed once per comparison (many runs evaluate the same sets)."""

    def __init__(self):
        self._known = {}

    def split(self, cb_dataset, root, split):
        key = (cb_dataset, root, split)
        if key not in self._known:
            identity = split_identity(cb_dataset, root, split)
            if cb_dataset.startswith("wds/"):
                identity = {**identity, "meta": {name: _file_digest(os.path.join(root, name)) for name in _WDS_META
                                                 if os.path.isfile(os.path.join(root, name))}}
            self._known[key] = identity
        return self._known[key]

    def of(self, spec, task):
        """What identifies the data ``task`` reads from ``spec``."""
        identity = {"test": self.split(spec.cb_dataset, spec.root, "test")}
        if task == LINEAR_PROBE:
            identity["train"] = self.split(spec.cb_dataset, spec.train_root or spec.root, "train")
        if spec.classnames:
            identity["classnames"] = list(spec.classnames)
        return identity


def expected(identities, settings, spec, task):
    """The ``inputs`` record a result of ``task`` on ``spec`` must hold to be reused."""
    return {"set": identities.of(spec, task), "settings": settings.of(task)}


def difference(recorded, wanted, set_name):
    """Why a result recorded with ``recorded`` inputs cannot stand for ``wanted`` ones (None if it can)."""
    if recorded is None:
        return "it records no inputs (written by an earlier version, which did not record them)"
    if recorded.get("set") != wanted["set"]:
        return f"the content of set {set_name!r} changed since it was computed"
    old, new = recorded.get("settings", {}), wanted["settings"]
    if old != new:
        changed = _changed_settings(old, new)
        return f"its settings changed ({', '.join(changed)})"
    return None


def _changed_settings(old, new, prefix=""):
    """``name old -> new`` for each setting that differs, nested ones (the probe's) by their own names."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_settings(a, b)
        elif a != b:
            out.append(f"{prefix}{name} {json.dumps(a)} -> {json.dumps(b)}")
    return out


def record(path, inputs):
    """Add ``inputs`` to the result JSON at ``path`` (written by clip_benchmark or by this package)."""
    with open(path) as f:
        result = json.load(f)
    result[KEY] = inputs
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)  # a result without its inputs never stays under the final name
