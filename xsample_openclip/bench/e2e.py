"""Section ``e2e``: OpenCLIP's own trainer, run as a user runs it, with the stock losses and with X-Sample.

Every run is ``python -m open_clip_train.main ...`` in a fresh process (the installed start-up hook adds
``--loss``), on the same generated CSV data (``data.write_shape_csv``), model, seed and flags:

    --loss clip                          ClipLoss (stock)
    --loss xsample                       online caption encoder (all-MiniLM-L6-v2 on the run's device)
    --loss xsample --xsample-embeddings  precomputed table (built in-process with ``precompute.build_table``)
    --loss clip --siglip                 SigLipLoss (stock), on ``--e2e-siglip-model``
    --loss xsample-siglip --siglip       the sigmoid X-Sample loss with the precomputed table

The sigmoid pair runs a SigLIP-style config (on CPU the package's ``xs-tiny-sigmoid-64``, with a logit
bias) and passes ``--siglip`` to both runs: OpenCLIP's stock loss selection needs it for SigLipLoss, and
it gives both the same initial logit scale (10) and bias (-10).

Step times are OpenCLIP's own "Batch (t)" from each run's out.log (``--log-every-n-steps 1``: one step
per line), each epoch's first step left out (it waits for the data loader to start); ratios are
against the stock run of the same model. With ``--e2e-rounds`` > 1 the order of the runs alternates.
"""
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..demo.trained_loss import asked_loss, check_trained_loss
from .common import load_average, markdown_table, median, say
from .data import write_shape_csv

STEP_RE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/.*?Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+)")
LOSS_RE = re.compile(r"\| INFO \| (Loss: .*)$", re.MULTILINE)
CAPTIONS_RE = re.compile(r"\| INFO \| (X-Sample captions, epoch .*)$", re.MULTILINE)


def parse_steps(log_text: str):
    """[(epoch, samples so far, data time, batch time)] of every logged step in an OpenCLIP out.log."""
    return [(int(e), int(s), float(d), float(b)) for e, s, d, b in STEP_RE.findall(log_text)]


def steady(steps):
    """(epoch, batch time) of every step but each epoch's first (it waits for the data loader to start)."""
    out, seen = [], set()
    for epoch, _, _, batch_t in steps:
        if epoch in seen:
            out.append((epoch, batch_t))
        seen.add(epoch)
    return out


def trainer_command(data, model: str, batch: int, epochs: int, workers: int, device: str, precision: str,
                    logs, name: str, extra: List[str], python: str = sys.executable) -> List[str]:
    """``python -m open_clip_train.main`` with the flags every benchmark run shares, then ``extra``."""
    return [python, "-m", "open_clip_train.main", "--train-data", str(data), "--dataset-type", "csv",
            "--model", model, "--batch-size", str(batch), "--epochs", str(epochs), "--workers", str(workers),
            "--device", device, "--precision", precision, "--lr", "1e-4", "--warmup", "2", "--wd", "0.1",
            "--log-every-n-steps", "1", "--seed", "0", "--save-frequency", "0", "--logs", str(logs),
            "--name", name, *extra]


def trainer_env(threads: int) -> dict:
    """The environment of a trainer process: the start-up hook active, offline, unbuffered."""
    env = {k: v for k, v in os.environ.items() if k != "XSAMPLE_OPENCLIP_DISABLE"}
    env.update(OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


@dataclass
class Run:
    label: str
    model: str
    flags: List[str]
    reference: Optional[str] = None   # label of the stock run this one is compared with
    steps: list = field(default_factory=list)       # every logged step of every round
    steady: list = field(default_factory=list)      # (epoch, batch time) without each epoch's first step
    loss_lines: List[str] = field(default_factory=list)
    caption_lines: List[str] = field(default_factory=list)

    def read_log(self, log_text: str) -> None:
        steps = parse_steps(log_text)
        self.steps += steps
        self.steady += steady(steps)
        self.loss_lines += LOSS_RE.findall(log_text)
        self.caption_lines += CAPTIONS_RE.findall(log_text)

    def medians(self):
        return (median([b for e, b in self.steady if e == 0]), median([b for e, b in self.steady if e > 0]))


def plan(args, softmax_table, sigmoid_table) -> List[Run]:
    m, s = args.e2e_model, args.e2e_siglip_model
    clip, siglip = "stock ClipLoss (--loss clip)", "stock SigLipLoss (--loss clip --siglip)"
    return [Run(clip, m, ["--loss", "clip"]),
            Run("--loss xsample, online encoder", m, ["--loss", "xsample"], clip),
            Run("--loss xsample, precomputed table", m, ["--loss", "xsample", "--xsample-embeddings",
                                                         str(softmax_table)], clip),
            Run(siglip, s, ["--loss", "clip", "--siglip"]),
            Run("--loss xsample-siglip, precomputed table", s, ["--loss", "xsample-siglip", "--siglip",
                                                                "--xsample-embeddings", str(sigmoid_table)], siglip)]


def build_tables(data, models, device, folder):
    """A precomputed table per distinct tokenizer of ``models`` (same kind and context: one table)."""
    import open_clip

    from .. import model_configs, precompute
    from ..targets.encoders import SentenceEncoder
    from ..targets.sources import iter_captions

    model_configs.register()
    encoder, tables, out = SentenceEncoder(device=str(device)), {}, {}
    for model in models:
        tokenizer = open_clip.get_tokenizer(model)
        identity = (type(tokenizer).__name__, int(getattr(tokenizer, "context_length", 0) or 0))
        if identity not in tables:
            tables[identity] = Path(folder) / f"table_{model}"
            logging.disable(logging.INFO)
            try:
                precompute.build_table(tables[identity], iter_captions(str(data)), tokenizer, encoder, model)
            finally:
                logging.disable(logging.NOTSET)
        out[model] = tables[identity]
    return out


def run(args, device, results, work):
    work = Path(work) / "e2e"
    precision = "amp_bf16" if device.type == "cuda" else "fp32"
    say(f"## End to end: `python -m open_clip_train.main`, {args.e2e_model} (sigmoid pair: {args.e2e_siglip_model} "
        f"--siglip), batch {args.e2e_batch}, {args.e2e_steps} steps x {args.e2e_epochs} epochs, {precision}, "
        f"{device.type}, --workers {args.e2e_workers} ({load_average()})\n")
    data = write_shape_csv(work / "data", n=args.e2e_batch * args.e2e_steps, px=64)
    tables = build_tables(data, [args.e2e_model, args.e2e_siglip_model], device, work)
    runs = plan(args, tables[args.e2e_model], tables[args.e2e_siglip_model])
    for rnd in range(args.e2e_rounds):
        for run_ in (runs if rnd % 2 == 0 else runs[::-1]):
            name = f"r{rnd}_run{runs.index(run_)}"
            cmd = trainer_command(data, run_.model, args.e2e_batch, args.e2e_epochs, args.e2e_workers,
                                  device.type, precision, work / "logs", name, run_.flags)
            _train(cmd, work, args.threads, run_.label)
            check_trained_loss(work / "logs" / name, asked_loss(run_.flags))  # no silent stock CLIP
            run_.read_log((work / "logs" / name / "out.log").read_text())
    records = _records(runs)
    _report(records, args)
    results["e2e"] = records


def _train(cmd, cwd, threads, label):
    proc = subprocess.run(cmd, cwd=cwd, env=trainer_env(threads), capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"trainer run failed ({label}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")


def _records(runs: List[Run]):
    by_label = {r.label: r for r in runs}
    records = []
    for r in runs:
        first, later = r.medians()
        ref_first, ref_later = by_label[r.reference].medians() if r.reference else (first, later)
        records.append(dict(run=r.label, model=r.model, flags=r.flags, reference=r.reference or r.label,
                            steps=len(r.steps), epoch1_step_s=first, later_step_s=later,
                            epoch1_ratio=first / ref_first, later_ratio=later / ref_later,
                            data_s=median([d for _, _, d, _ in r.steps]), loss_lines=r.loss_lines,
                            caption_lines=r.caption_lines))
    return records


def _report(records, args):
    rows = [[r["run"], r["model"], f"{r['epoch1_step_s']:.3f}", f"**{r['epoch1_ratio']:.2f}**",
             f"{r['later_step_s']:.3f}", f"**{r['later_ratio']:.2f}**", f"{r['data_s']:.3f}"] for r in records]
    say(markdown_table(["run", "model", "step s, epoch 1 (median)", "ratio vs stock", "step s, later epochs",
                        "ratio vs stock", "data wait s (median)"], rows))
    say(f"\nBatch (t) from each run's out.log, each epoch's first step left out; {args.e2e_rounds} round(s) per "
        f"run. Each ratio is against the stock run of the same model. ({load_average()})\n")
