"""Resuming keeps the loss: ``--resume`` refuses to continue a run with other loss settings.

OpenCLIP 3.3.0 (main.py L284-293) rewrites ``<logs>/<name>/params.txt`` with the new arguments once the
model is built, so the run's own settings are read here, at argument parsing, before that happens
(every rank parses before ``init_process_group``, and rank 0 writes only after it). A resumed run whose
``--loss`` or loss flags differ from the run it continues would silently mix two objectives in one
checkpoint (the worst case: ``--loss`` forgotten, so plain CLIP continues an X-Sample run); it is refused
with the differences and the fixes, unless ``--xsample-allow-changed-settings`` is given, in which case
the differences are logged once logging is set up. Nothing is lost either way: ``out.log`` is appended
to, and it keeps the previous launch's parameters.

Compared: ``loss`` and every ``xsample_*`` value, except those that change no number the loss computes
(``NOT_COMPARED``). Checked for ``--resume latest`` (the run ``<logs>/<name>``, once it has a checkpoint)
and for ``--resume PATH`` when PATH is ``<run>/checkpoints/<file>.pt`` next to a ``params.txt``.
"""
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

#: Settings a resumed run may change freely: memory/cost knobs and this check's own switches.
NOT_COMPARED = frozenset({"xsample_cache_size", "xsample_allow_changed_settings", "xsample_check_captions"})
OVERRIDE_FLAG = "--xsample-allow-changed-settings"

#: Changes accepted with the override flag, logged by ``log_allowed_changes`` once logging exists.
_ALLOWED: List[str] = []


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


def changed_settings(args, previous: Dict[str, str]) -> List[Tuple[str, str, str]]:
    """(name, value in the previous run, value now) for each compared setting that differs."""
    changes = []
    now = vars(args)
    if "loss" not in previous:  # params.txt written without this plugin: OpenCLIP's own loss
        if now.get("loss", "clip") != "clip":
            changes.append(("loss", "none recorded (OpenCLIP without this plugin: its own CLIP loss)",
                            str(now["loss"])))
    for name in sorted(now):
        if name in NOT_COMPARED or not (name == "loss" or name.startswith("xsample_")):
            continue
        if name not in previous:
            continue  # a flag the previous run's version did not have
        old, new = previous[name], str(now[name])
        if old != new and os.path.normpath(old) != os.path.normpath(new):
            changes.append((name, old, new))
    return changes


def resume_problems(args) -> List[str]:
    """Empty if the resumed run keeps its loss settings (or the override flag allows the change)."""
    params = previous_run(args)
    if params is None:
        return []
    changes = changed_settings(args, read_params(params))
    if not changes:
        return []
    lines = [f"{_flag(name)}: {old} in that run, {new} now" for name, old, new in changes]
    if getattr(args, "xsample_allow_changed_settings", False):
        _ALLOWED[:] = [f"resuming {params.parent} with changed loss settings ({OVERRIDE_FLAG}): "
                       + "; ".join(lines)]
        return []
    return [f"--resume {args.resume} continues the run in {params.parent}, but with other loss settings "
            f"than that run's {params}:\n    " + "\n    ".join(lines)
            + f"\n  A resumed run keeps its loss, or its checkpoints mix two objectives. Pass that run's "
              f"values again, start a new --name, or add {OVERRIDE_FLAG} to change them on purpose."]


def log_allowed_changes() -> None:
    """Called once logging is set up (at loss creation): record accepted changes in out.log."""
    while _ALLOWED:
        logging.warning(_ALLOWED.pop())
