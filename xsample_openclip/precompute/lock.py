"""One writer per table folder: a second precompute process on a folder being written is refused.

Two processes writing one folder truncate each other's memory-mapped ``embeddings.npy`` and delete
each other's ``scan/`` folder; the table they leave is garbage or the run crashes. It happens easily:
``srun -n 2 python -m xsample_openclip.precompute ...`` (or mpirun) without torchrun leaves WORLD_SIZE
unset, so every process builds the whole table into the same --out.

Granularity: the folder a process writes. A one-process build and ``--merge`` write --out; a shard
job (``--shard I/N``, or torchrun rank I of N) writes ``OUT/shards/I-of-N/``, so the jobs of one split
and the torchrun ranks run side by side, and only a second job for the same folder is refused. A
merge also holds every sub-table's lock while it reads them, so it never copies a shard that a job
is rewriting.

The lock is ``flock`` on ``FOLDER/.precompute.lock``, taken without waiting and held for the whole
build or merge. The operating system drops it when the process exits, also on a crash or SIGKILL, so
a stale lock never blocks a re-run (the file stays; it is not the lock). Forked children (the
``--workers`` tokenizer processes) close their inherited copy at once, so a child left behind by a
crashed parent never holds it. The command line takes the lock before it loads the encoder, so a
refused process costs seconds. On a file system without flock support (some Lustre mounts) a warning
says the folder is not guarded, and the build goes on.
"""
import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from .common import PrecomputeError

LOCK_FILE = ".precompute.lock"

#: Folder -> descriptor of each lock this process holds (closed, not unlocked, in forked children).
_HELD = {}


def _forget_in_child():
    for fd in list(_HELD.values()):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _holder(path: Path) -> str:
    """Who holds the lock, as the holder wrote it (best effort: it may be mid-write)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "its pid is not recorded yet"
    return (f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}: "
            f"{info.get('command')}")


def busy_message(folder: Path, holder: str) -> str:
    return (f"{folder} is being written by another precompute process ({holder}); a second writer on the "
            "same folder would truncate its memory-mapped files and delete its scan. Wait for that process "
            "to finish (running the command again afterwards keeps or resumes the table), or split one build "
            "across processes the supported ways: one job per shard (`--shard I/N` for I = 0 .. N-1 with the "
            "same --out, then `--out OUT --merge`), or torchrun (`torchrun --nproc_per_node N -m "
            "xsample_openclip.precompute ...`). srun or mpirun without torchrun leave WORLD_SIZE unset, so "
            "each of their processes builds the whole table into the same --out")


def _acquire(fd, folder: Path, path: Path) -> bool:
    """True once locked; False (with a warning) where the file system has no locks; raises when busy."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise PrecomputeError(busy_message(folder, _holder(path))) from None
        logging.warning(f"{folder}: the file system does not support locks ({err}), so a second precompute "
                        "process writing this folder would not be detected; run one writer per folder")
        return False


@contextlib.contextmanager
def writer_lock(folder):
    """Hold the write lock of ``folder`` (created if missing) for the ``with`` block; raises
    ``PrecomputeError`` naming the holder and the fixes when another process holds it. Re-entrant
    within a process (the command line takes it before loading the encoder, ``build_table`` again)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = str(folder.resolve())
    if name in _HELD:
        yield
        return
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _acquire(fd, folder, path):
            yield
            return
        _HELD[name] = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                      "command": " ".join(sys.argv)}).encode(), 0)
            yield
        finally:
            os.ftruncate(fd, 0)  # a finished folder's lock file is empty; a crashed one's names its writer
            del _HELD[name]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
