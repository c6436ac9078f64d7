"""Progress bars that stay readable when the output goes to a file.

On a terminal a tqdm bar redraws itself in place. Written to a log file, every redraw is one more
carriage-return-separated copy of the bar, so a training run's log fills with a bar per step. Every
progress bar of the package's commands (the demo, precompute, evaluation, data builds) is made here:
on a terminal it is tqdm as usual; elsewhere it writes one plain line at most every ``LOG_INTERVAL``
seconds (and the final state when it closes), with no carriage returns or cursor moves.
"""
from __future__ import annotations

import sys

from tqdm import tqdm

#: Seconds between two progress lines when the output is not a terminal.
LOG_INTERVAL = 60.0


class _Lines:
    """A text stream for tqdm that turns its in-place redraws into whole lines (blank ones dropped)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        for piece in text.replace("\x1b[A", "").replace("\r", "\n").split("\n"):
            piece = piece.rstrip()
            if piece:
                self.stream.write(piece + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable=None, *, file=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on a terminal; a line at most every ``LOG_INTERVAL`` s elsewhere."""
    stream = sys.stderr if file is None else file
    if not _is_terminal(stream):
        kwargs.update(file=_Lines(stream), mininterval=max(kwargs.get("mininterval", 0.1), LOG_INTERVAL),
                      position=None, dynamic_ncols=False, ncols=100)
        return tqdm(iterable, **kwargs)
    return tqdm(iterable, file=stream, **kwargs)
