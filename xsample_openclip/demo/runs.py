"""Launch OpenCLIP's own trainer for one (loss, seed) run, with a progress bar, and reuse finished runs.

Every run goes through ``python -m xsample_openclip.launch`` (OpenCLIP's ``open_clip_train.main`` with
its own flags, patched explicitly, so the plugin is active even where the start-up hook is not), and
its ``params.txt`` must then record the asked loss (``trained_loss``). A run is reused only if its final
checkpoint exists and its key matches: the key hashes everything that determines the result (the full
flag list, the training data's content, the loss's flag defaults, the training code and the versions
it runs on: ``fingerprint``); an interrupted or outdated run is started afresh.
Several runs can train at once, one thread each (tiny models on a small CPU train far faster with one
OpenMP thread per process than with several).
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..progress import progress_bar
from . import fingerprint
from .trained_loss import asked_loss, check_trained_loss

#: How a run's trainer is started (after the interpreter): the hook-free launcher.
LAUNCHER = ("-m", "xsample_openclip.launch")

_PROGRESS = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+)")


@dataclass(frozen=True)
class TrainSettings:
    """Everything shared by the runs of one comparison: only the loss flags and the seed differ."""

    model: str = "xs-tiny-vit-64"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2.5e-4
    wd: float = 0.1
    warmup: int = 50
    precision: str = "fp32"
    extra: tuple = ()


@dataclass(frozen=True)
class TrainData:
    """What ``--train-data`` needs: a CSV (deterministic order for a seed) and its size."""

    csv: str
    num_samples: int
    csv_args: tuple = field(default=("--csv-img-key", "filepath", "--csv-caption-key", "title"))


@dataclass(frozen=True)
class RunSpec:
    """One training run: its loss flags and seed; optionally its own settings (a fine-tuning stage),
    the checkpoint it starts from (OpenCLIP's ``--pretrained PATH``) and its own training CSV (the same
    images with other captions, e.g. class captions)."""

    name: str
    loss_args: tuple
    seed: int
    settings: Optional[TrainSettings] = None
    pretrained: Optional[str] = None
    data: Optional[TrainData] = None

    def settings_or(self, default: TrainSettings) -> TrainSettings:
        return self.settings or default

    def data_or(self, default: TrainData) -> TrainData:
        return self.data or default


def command(spec: RunSpec, data: TrainData, settings: TrainSettings, logs: Path) -> List[str]:
    settings, data = spec.settings_or(settings), spec.data_or(data)
    pretrained = ["--pretrained", spec.pretrained] if spec.pretrained else []
    return [
        sys.executable, *LAUNCHER,
        "--train-data", data.csv, "--dataset-type", "csv", *data.csv_args,
        "--model", settings.model, "--epochs", str(settings.epochs), "--batch-size", str(settings.batch_size),
        "--lr", str(settings.lr), "--wd", str(settings.wd), "--warmup", str(settings.warmup),
        "--precision", settings.precision, "--device", "cpu", "--workers", "1",
        "--save-frequency", "0", "--log-every-n-steps", "10", "--seed", str(spec.seed),
        f"--logs={logs}", "--name", spec.name, *pretrained, *spec.loss_args, *settings.extra,
    ]


def run_key(spec: RunSpec, data: TrainData, settings: TrainSettings, logs: Path) -> str:
    """A hash of everything that determines the run's result (see ``fingerprint``)."""
    data = spec.data_or(data)
    flags = command(spec, data, settings, Path(logs))[1:]  # the interpreter's path changes no result
    image_key = dict(zip(data.csv_args[::2], data.csv_args[1::2])).get("--csv-img-key", "filepath")
    blob = {
        "flags": flags,
        "data": fingerprint.data_fingerprint(data.csv, image_key),
        "loss_defaults": fingerprint.loss_defaults(asked_loss(spec.loss_args)),
        "code": fingerprint.code_fingerprint(),
        "pretrained": fingerprint.file_fingerprint(spec.pretrained) if spec.pretrained else None,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_of(logs: Path, spec: RunSpec, settings: TrainSettings) -> Path:
    return logs / spec.name / "checkpoints" / f"epoch_{spec.settings_or(settings).epochs}.pt"


def train(spec: RunSpec, data: TrainData, settings: TrainSettings, logs: Path, bar_position: int = 0) -> Path:
    """Train one run (or reuse it); returns its final checkpoint."""
    logs = Path(logs)
    ckpt = checkpoint_of(logs, spec, settings)
    stamp = logs / spec.name / "run_key.txt"
    key = run_key(spec, data, settings, logs)
    loss = asked_loss(spec.loss_args)
    if ckpt.is_file() and stamp.is_file() and stamp.read_text() == key:
        check_trained_loss(logs / spec.name, loss)
        return ckpt
    shutil.rmtree(logs / spec.name, ignore_errors=True)  # an unfinished or outdated run
    settings = spec.settings_or(settings)
    steps_per_epoch = spec.data_or(data).num_samples // settings.batch_size
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = command(spec, data, settings, logs)
    tail: List[str] = []
    with progress_bar(total=settings.epochs * steps_per_epoch, desc=f"train {spec.name}", unit="step",
                      position=bar_position, leave=True) as bar:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            m = _PROGRESS.search(line)
            if m:
                epoch, seen, total = (int(g) for g in m.groups())
                bar.update(epoch * steps_per_epoch + round(seen / total * steps_per_epoch) - bar.n)
        proc.wait()
    if proc.returncode != 0 or not ckpt.is_file():
        raise RuntimeError(f"training {spec.name} failed (exit {proc.returncode}):\n{' '.join(cmd)}\n"
                           + "".join(tail))
    check_trained_loss(logs / spec.name, loss)
    stamp.write_text(key)
    return ckpt


def train_all(specs: Sequence[RunSpec], data: TrainData, settings: TrainSettings, logs: Path,
              parallel: int = 2) -> Dict[str, Path]:
    """Train runs ``parallel`` at a time; returns name -> checkpoint."""
    results: Dict[str, Path] = {}
    errors: List[BaseException] = []
    pending = list(enumerate(specs))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not pending or errors:
                    return
                position, spec = pending.pop(0)
            try:
                results[spec.name] = train(spec, data, settings, logs, bar_position=position)
            except BaseException as err:  # re-raised in the caller's thread
                errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(max(1, parallel))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {spec.name: results[spec.name] for spec in specs}


_STEP_LOSS = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+).* Loss: ([0-9.eE+-]+) \(")


def loss_curve(out_log: Path):
    """(epoch fractions, logged total loss) from an OpenCLIP out.log (every --log-every-n-steps)."""
    xs, ys = [], []
    for line in Path(out_log).read_text().splitlines():
        m = _STEP_LOSS.search(line)
        if m:
            epoch, seen, total, loss = m.groups()
            xs.append(int(epoch) + int(seen) / int(total))
            ys.append(float(loss))
    return xs, ys
