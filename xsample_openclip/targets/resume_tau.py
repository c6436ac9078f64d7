"""``--xsample-tau-s auto`` on ``--resume``: keep the run's tau_s, recalibrate on request, or refuse.

Why: a tau_s calibrated by ``auto`` is the one that gives the recorded self-mass at the recorded global
batch. A resume that keeps it while the self-mass or the global batch changes would record in
params.txt a self-mass that did not produce the tau_s in use; a resume that cannot find it (a
checkpoint outside ``<run>/checkpoints``, ``--remote-sync``) would silently calibrate a new one,
possibly at another global batch. The rule, one for both: a resume keeps the run's tau_s when it was
calibrated at this run's self-mass and global batch, or given as a number (its record then still says
so, and claims no self-mass); any other case recalibrates only when
``--resume-allow-loss-changes`` asks for it (logged as a recalibration), and is refused otherwise, with
that run's value to pass as ``--xsample-tau-s VALUE`` where it can be read.

How a run's calibration is known: every run records in params.txt, next to ``xsample_tau_s``, how it
was obtained (``xsample_tau_s_calibration``: the self-mass and global batch it was calibrated at and
the sample, or ``given`` for a number passed on the command line). A params.txt written before this
record existed is read as calibrated at its own ``xsample_self_mass`` and global batch.
"""
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..registry import ALLOW_CHANGES_FLAG, PREVIOUS_RUN_UNKNOWN

#: The argument (and params.txt line) that says how the run's tau_s was obtained.
CALIBRATION_RECORD = "xsample_tau_s_calibration"
GIVEN = "given with --xsample-tau-s (not calibrated; --xsample-self-mass unused)"
_CALIBRATED = re.compile(r"^auto: self-mass ([0-9.eE+-]+), global batch (\d+)")


def calibration_record(self_mass: float, global_batch: int, sample: str) -> str:
    return f"auto: self-mass {self_mass!r}, global batch {global_batch}; {sample}"


def calibrated_at(params: Dict[str, str]) -> Optional[Tuple[float, int]]:
    """(self-mass, global batch) the resumed run's tau_s was calibrated at; None if it was given."""
    record = params.get(CALIBRATION_RECORD)
    try:
        if record is None:  # params.txt from before the record: its own settings
            batch = int(params["batch_size"]) * max(1, int(params.get("world_size", 1))) * max(
                1, int(params.get("accum_freq", 1)))
            return float(params["xsample_self_mass"]), batch
        match = _CALIBRATED.match(record)
        return (float(match.group(1)), int(match.group(2))) if match else None
    except (KeyError, ValueError):
        return None


@dataclass
class ResumeDecision:
    keep: Optional[float] = None          # the resumed run's tau_s, kept
    record: str = ""                      # its calibration record, kept with it
    recalibrating: Optional[str] = None   # why a resume recalibrates (asked for with the override)
    problem: Optional[str] = None         # a refusal naming the fixes


def resume_decision(args, resumed: Optional[Dict[str, str]], global_batch: int) -> ResumeDecision:
    """What ``auto`` does for this run: a fresh calibration (not resuming), keep, recalibrate or refuse."""
    if resumed is None:
        return ResumeDecision()
    allowed = bool(getattr(args, "resume_allow_loss_changes", False))
    unknown = resumed.get(PREVIOUS_RUN_UNKNOWN)
    if unknown is not None:
        return _unknown_run(args, unknown, allowed)
    try:
        previous = float(resumed["xsample_tau_s"])
    except (KeyError, ValueError):
        previous = None
    was, now = calibrated_at(resumed), (float(args.xsample_self_mass), int(global_batch))
    if previous is not None and resumed.get(CALIBRATION_RECORD) == GIVEN:
        return ResumeDecision(keep=previous, record=GIVEN)  # no self-mass claimed: nothing to disagree with
    if previous is not None and was is not None and was[1] == now[1] and abs(was[0] - now[0]) <= 1e-12:
        return ResumeDecision(keep=previous, record=resumed.get(CALIBRATION_RECORD) or calibration_record(
            was[0], was[1], "calibrated by an earlier version; sample not recorded"))
    if previous is None:
        why = f"that run's params.txt records no number for xsample_tau_s ({resumed.get('xsample_tau_s')!r})"
    elif was is None:
        why = f"that run's tau_s {previous!r} was {resumed.get(CALIBRATION_RECORD) or 'not calibrated'}"
    else:
        why = (f"that run's tau_s {previous!r} was calibrated at self-mass {was[0]!r} and global batch "
               f"{was[1]}, this run has self-mass {now[0]!r} and global batch {now[1]}")
    if allowed:
        return ResumeDecision(recalibrating=why)
    keep_hint = (f"keep that run's targets with --xsample-tau-s {previous!r} (they then no longer put "
                 f"self-mass {now[0]!r} on the sample at global batch {now[1]}), or " if previous is not None else "")
    return ResumeDecision(problem=(
        f"--xsample-tau-s auto with --resume {args.resume}: {why}. Keeping it would record a self-mass that "
        f"did not produce it. Either {keep_hint}recalibrate at this run's settings on purpose with "
        f"{ALLOW_CHANGES_FLAG} (the new tau_s is logged and recorded)."))


def _unknown_run(args, unknown: str, allowed: bool) -> ResumeDecision:
    """A checkpoint whose run's params.txt cannot be found: recalibrate on request, else refuse."""
    why = f"the tau_s of the run it continues cannot be read: {unknown}"
    if allowed:
        return ResumeDecision(recalibrating=why)
    return ResumeDecision(problem=(
        f"--xsample-tau-s auto with --resume {args.resume}: {why}. Calibrating anew could give another "
        "tau_s (other captions, another global batch) and change the targets mid-run without a word. "
        "Pass that run's value: --xsample-tau-s VALUE (its params.txt records it as xsample_tau_s, its "
        f"out.log as 'X-Sample tau_s calibrated'), or calibrate anew on purpose with {ALLOW_CHANGES_FLAG} "
        "(also for a first launch with --remote-sync and --resume latest, or to fine-tune from a "
        "model-only checkpoint)."))
