"""Resuming keeps the loss: ``--resume`` refuses to continue a run with other loss settings.

OpenCLIP 3.3.0 (main.py L284-293) rewrites ``<logs>/<name>/params.txt`` with the new arguments once the
model is built, so the run's own settings are read at start-up (startup_checks.py, before the log folder is
touched). A resumed run whose ``--loss`` or loss settings differ from the run it continues would
silently mix two objectives in one checkpoint (the worst case: ``--loss`` forgotten, so plain CLIP
continues an X-Sample run); it is refused with the differences and the fixes, unless
``--resume-allow-loss-changes`` is given, in which case the differences are logged.

Compared: ``loss`` and every setting the loss plugin lists in ``kept_on_resume`` (so every plugin's
flags are covered, not only this package's). Checked for ``--resume latest`` (the run
``<logs>/<name>``, once it has a checkpoint) and for ``--resume PATH`` when PATH is
``<run>/checkpoints/<file>.pt`` next to a ``params.txt``.
"""
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from xsample_openclip.registry import ALLOW_CHANGES_FLAG, StartupResult


def read_params(path) -> Dict[str, str]:
    """``params.txt`` as OpenCLIP writes it: one ``name: value`` line per argument."""
    params = {}
    for line in Path(path).read_text().splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            params[name] = value
    return params


def previous_run(args) -> Optional[Path]:
    """The params.txt of the run that ``--resume`` continues, if there is one on this file system."""
    resume = getattr(args, "resume", None)
    if resume is None or getattr(args, "remote_sync", None) is not None:
        return None
    if resume == "latest":
        if not getattr(args, "name", None):
            return None  # OpenCLIP makes a new dated name: nothing to continue
        run = Path(args.logs, args.name)
        if not any((run / "checkpoints").glob("*.pt")):
            return None  # nothing to resume from: OpenCLIP starts afresh
    else:
        checkpoint = Path(resume)
        if "://" in resume or not checkpoint.is_file() or checkpoint.parent.name != "checkpoints":
            return None
        run = checkpoint.parent.parent
    params = run / "params.txt"
    return params if params.is_file() else None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def changed_settings(args, previous: Dict[str, str], kept: Iterable[str]) -> List[Tuple[str, str, str]]:
    """(name, value in the previous run, value now) for ``loss`` and each kept setting that differs."""
    now = vars(args)
    changes = []
    if "loss" not in previous:  # params.txt written without this plugin: OpenCLIP's own loss
        if now.get("loss", "clip") != "clip":
            changes.append(("loss", "none recorded (OpenCLIP without this plugin: its own CLIP loss)",
                            str(now["loss"])))
    for name in ["loss", *sorted(set(kept))]:
        if name not in previous or name not in now:
            continue  # a setting the previous run's version did not have
        old, new = previous[name], str(now[name])
        if old != new and os.path.normpath(old) != os.path.normpath(new):
            changes.append((name, old, new))
    return changes


def resume_check(args, kept: Iterable[str]) -> Tuple[StartupResult, Optional[dict]]:
    """The refusal (or, with the override, the logged note) for a resume that changes the loss, and
    the previous run's params (None when not resuming). A setting given as ``auto`` is resolved at
    start-up by its plugin, which is handed the previous params to keep the run's value; it is not
    compared here."""
    result = StartupResult()
    params = previous_run(args)
    if params is None:
        return result, None
    previous = read_params(params)
    changes = [c for c in changed_settings(args, previous, kept) if c[2] != "auto"]
    if not changes:
        return result, previous
    lines = [f"{_flag(name)}: {old} in that run, {new} now" for name, old, new in changes]
    if getattr(args, "resume_allow_loss_changes", False):
        result.notes.append(f"resuming {params.parent} with changed loss settings ({ALLOW_CHANGES_FLAG}): "
                            + "; ".join(lines))
        return result, previous
    result.problems.append(
        f"--resume {args.resume} continues the run in {params.parent}, but with other loss settings "
        f"than that run's {params}:\n    " + "\n    ".join(lines)
        + f"\n  A resumed run keeps its loss, or its checkpoints mix two objectives. Pass that run's "
          f"values again, start a new --name, or add {ALLOW_CHANGES_FLAG} to change them on purpose.")
    return result, previous
