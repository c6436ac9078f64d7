"""Which loss a run really trained, read from its ``params.txt`` and checked against the loss asked for.

Stock OpenCLIP has no ``--loss`` flag: without the plugin (start-up hook not loaded: ``python -S``,
``XSAMPLE_OPENCLIP_DISABLE=1``, an install without the ``.pth``, another import hook claiming OpenCLIP
first) argparse reads ``--loss xsample`` as ``--loss-dist-impl xsample`` and trains plain CLIP without
a word. Only the plugin's parser writes a ``loss: NAME`` line into ``params.txt``, so the demo checks
that line after every run, and again before it reuses a finished one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

LAUNCHER = "python -m xsample_openclip.launch"


class WrongLossError(RuntimeError):
    """A run's ``params.txt`` does not record the loss that was asked for."""


def asked_loss(flags: Sequence[str]) -> str:
    """The value of the last ``--loss`` in ``flags`` (``--loss X`` or ``--loss=X``)."""
    found = None
    for i, flag in enumerate(flags):
        if flag == "--loss" and i + 1 < len(flags):
            found = flags[i + 1]
        elif flag.startswith("--loss="):
            found = flag[len("--loss="):]
    if found is None:
        raise ValueError(f"no --loss in {list(flags)}: every demo run names its loss")
    return found


def recorded_loss(params_txt: Path) -> Optional[str]:
    """The ``loss:`` entry of an OpenCLIP ``params.txt``, or None if it has none (stock OpenCLIP)."""
    for line in Path(params_txt).read_text().splitlines():
        name, sep, value = line.partition(": ")
        if sep and name == "loss":
            return value.strip()
    return None


def check_trained_loss(run_dir: Path, asked: str) -> None:
    """Raise ``WrongLossError`` unless ``run_dir/params.txt`` says ``loss: <asked>``."""
    params = Path(run_dir) / "params.txt"
    if not params.is_file():
        raise WrongLossError(f"{params} is missing, so which loss the run {Path(run_dir).name} trained is "
                             f"unknown; delete {run_dir} and train it again through {LAUNCHER}")
    found = recorded_loss(params)
    if found == asked:
        return
    what = f"'loss: {found}'" if found is not None else "no 'loss:' line (stock OpenCLIP wrote it)"
    raise WrongLossError(
        f"run {Path(run_dir).name} was asked for --loss {asked}, but {params} records {what}: the X-Sample "
        f"plugin was not active in its trainer (start-up hook not loaded: python -S, XSAMPLE_OPENCLIP_DISABLE=1, "
        f"an install without the .pth file, or another import hook), so OpenCLIP trained its own loss. "
        f"Its numbers are not {asked}'s. Train through {LAUNCHER} (the demo does), delete {run_dir} and "
        f"run again; check any run with: grep '^loss:' {params}")
