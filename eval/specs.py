"""What a comparison is made of: runs, datasets, tasks, BG-Gap pairs (plain data, no torch).

Everything the CLI accepts is parsed into these objects, so the Python API (``compare``) and the CLI
share one code path and errors are raised before any model is loaded.
"""
import re
from dataclasses import dataclass, field
from typing import Optional, Tuple

# clip_benchmark task names, plus the one evaluation clip_benchmark cannot do by itself.
ZEROSHOT_CLASSIFICATION = "zeroshot_classification"
ZEROSHOT_RETRIEVAL = "zeroshot_retrieval"
LINEAR_PROBE = "linear_probe"
IN1K_TO_IN9 = "zeroshot_in1k_to_in9"  # 1000-way ImageNet zero-shot, predictions mapped to the 9 IN-9 classes

#: What a user asks for (``--tasks``) and the concrete tasks each word selects.
TASK_GROUPS = {
    "zeroshot": (ZEROSHOT_CLASSIFICATION, ZEROSHOT_RETRIEVAL, IN1K_TO_IN9),
    "linear_probe": (LINEAR_PROBE,),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SetupError(ValueError):
    """A problem with the arguments or the data on disk, found before any evaluation starts."""


@dataclass(frozen=True)
class Run:
    """One model to compare: a name (a report column) and the weights to load."""

    name: str
    checkpoint: str  # a training checkpoint (``epoch_N.pt``) or another file open_clip loads, or a pretrained tag


@dataclass(frozen=True)
class DatasetSpec:
    """One evaluation set, described the way clip_benchmark needs it.

    ``name`` labels the set in results (e.g. ``imagenet1k``, ``in9/mixed_rand``, ``shapes``);
    ``cb_dataset``/``root`` are clip_benchmark's ``--dataset``/``--dataset_root``; ``tasks`` are the tasks
    this set supports; ``classnames`` overrides clip_benchmark's class names (IN-9's 9-way zero-shot).
    Sets sharing a ``group`` are variants of one benchmark (IN-9); a group with ``mixed_same`` and
    ``mixed_rand`` variants gets a BG-Gap. ``train_root``: where the linear probe's ``train/`` split is, if
    not under ``root`` (the variants of a group all train on the group's training images).
    """

    name: str
    cb_dataset: str
    root: str
    tasks: Tuple[str, ...]
    classnames: Optional[Tuple[str, ...]] = None
    group: Optional[str] = None
    variant: Optional[str] = None
    notes: Tuple[str, ...] = field(default=())  # why a task this kind of set could have is unavailable
    train_root: Optional[str] = None


@dataclass(frozen=True)
class BgGap:
    """BG-Gap = acc1(same) - acc1(rand), for the datasets named ``same`` and ``rand`` (Xiao et al. 2020)."""

    label: str
    same: str
    rand: str


def check_name(name, what):
    """Names become folder and file names, so keep them to a safe alphabet."""
    if not _NAME.match(name or ""):
        raise SetupError(f"invalid {what} name {name!r}: use letters, digits, '_', '.', '-' (not starting with . - _)")
    return name


def parse_run(text):
    """``NAME=CHECKPOINT`` -> Run."""
    name, sep, checkpoint = text.partition("=")
    if not sep or not name or not checkpoint:
        raise SetupError(f"--run expects NAME=CHECKPOINT (e.g. xsample=logs/x/checkpoints/epoch_10.pt), got {text!r}")
    return Run(check_name(name.strip(), "run"), checkpoint.strip())


def parse_named_dir(text, flag):
    """``NAME=DIR`` -> (name, dir)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise SetupError(f"{flag} expects NAME=DIR, got {text!r}")
    return check_name(name.strip(), "dataset"), path.strip()


def parse_bg_gap(text):
    """``[LABEL=]SAME,RAND`` -> BgGap (dataset names as they appear in results)."""
    label, sep, pair = text.rpartition("=")
    parts = [p.strip() for p in pair.split(",")]
    if len(parts) != 2 or not all(parts):
        raise SetupError(f"--bg-gap expects [LABEL=]SAME,RAND (two dataset names), got {text!r}")
    same, rand = parts
    return BgGap(label.strip() if sep else f"{same} vs {rand}", same, rand)


def parse_tasks(text):
    """``zeroshot,linear_probe`` -> the concrete task names, in a stable order."""
    words = [w.strip() for w in (text.split(",") if isinstance(text, str) else text) if w.strip()]
    unknown = [w for w in words if w not in TASK_GROUPS]
    if unknown or not words:
        raise SetupError(f"--tasks takes a comma-separated subset of {', '.join(TASK_GROUPS)}; got {text!r}")
    return tuple(t for w in TASK_GROUPS for t in TASK_GROUPS[w] if w in words)
