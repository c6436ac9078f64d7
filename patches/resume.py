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
``<run>/checkpoints/<file>.pt`` next to a ``params.txt``. A resume whose run's params.txt cannot be
found (a checkpoint elsewhere or remote, ``--remote-sync``) cannot be compared; the plugin is told so
(``registry.PREVIOUS_RUN_UNKNOWN``), and the X-Sample plugin then refuses to calibrate ``auto`` anew
unless asked (``targets/resume_tau.py``).
"""
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from xsample_openclip.registry import ALLOW_CHANGES_FLAG, PREVIOUS_RUN_UNKNOWN, StartupResult


def read_params(path) -> Dict[str, str]:
    """``params.txt`` as OpenCLIP writes it: one ``name: value`` line per argument."""
    params = {}
    for line in Path(path).read_text().splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            params[name] = value
    return params


def previous_run(args) -> Tuple[Optional[Path], Optional[str]]:
    """(params.txt of the run ``--resume`` continues, None) when it is found; (None, why) when a
    checkpoint will be loaded but that run's params.txt cannot be found; (None, None) when no
    checkpoint will be loaded (not resuming, or ``--resume latest`` of a run without checkpoints, which
    OpenCLIP starts afresh; a missing local PATH is OpenCLIP's own error)."""
    resume = getattr(args, "resume", None)
    if resume is None:
        return None, None
    if resume == "latest":
        if not getattr(args, "name", None):
            return None, None  # OpenCLIP makes a new dated name: nothing to continue
        if getattr(args, "remote_sync", None) is not None:
            return None, (f"with --remote-sync, --resume latest loads the newest checkpoint under "
                          f"{args.remote_sync}/{args.name}/checkpoints, which start-up does not read (nor its "
                          "params.txt there)")
        run = Path(args.logs, args.name)
        if not any((run / "checkpoints").glob("*.pt")):
            return None, None  # nothing to resume from: OpenCLIP starts afresh
    else:
        checkpoint = Path(resume)
        if "://" in resume:
            return None, f"the checkpoint {resume} is remote, and so is its run's params.txt"
        if not checkpoint.is_file():
            return None, None
        if checkpoint.parent.name != "checkpoints":
            return None, (f"{resume} is not in a <run>/checkpoints folder next to that run's params.txt"
                          + _nearby_tau(checkpoint))
        run = checkpoint.parent.parent
    params = run / "params.txt"
    if not params.is_file():
        return None, f"{params} does not exist"
    return params, None


def _nearby_tau(checkpoint: Path) -> str:
    """A hint: the tau_s a params.txt beside or above the checkpoint records (not used, only shown)."""
    for params in (checkpoint.parent / "params.txt", checkpoint.parent.parent / "params.txt"):
        if params.is_file():
            tau = read_params(params).get("xsample_tau_s")
            if tau is not None:
                return f" (the params.txt at {params} records xsample_tau_s: {tau}; if that is the run, pass " \
                       f"--xsample-tau-s {tau})"
    return ""


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
    the previous run's params (None when not resuming; ``{PREVIOUS_RUN_UNKNOWN: why}`` when a
    checkpoint is loaded but its run's params.txt cannot be found, so nothing can be compared). A
    setting given as ``auto`` is resolved at start-up by its plugin, which is handed the previous params
    to decide (keep the run's value, recalibrate on request, or refuse); it is not compared here."""
    result = StartupResult()
    params, unknown = previous_run(args)
    if unknown is not None:
        return result, {PREVIOUS_RUN_UNKNOWN: unknown}
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
