"""One command on a machine with one CUDA GPU: the benchmark's GPU figures and real ViT-B-32 training runs.

    python -m xsample_openclip.bench.gpu_check --out gpu_check        # CUDA: at most --budget-s (570 s)
    python -m xsample_openclip.bench.gpu_check --dry-run --out plan   # anywhere: the plan and commands only

Steps, each a subprocess whose timeout is carved from what is left of ``--budget-s``:
1. probe: the largest batch whose amp_bf16 training step of the model (forward, X-Sample loss, backward,
   AdamW) fits on the GPU: powers of two from 256 up to ``--max-batch``, then the midpoint between the
   last fit and the first failure (``--batch N`` skips the probe);
2. data: ``--steps`` x batch rows of generated shape images (``data.write_shape_csv``) with distinct
   captions, so the online encoder meets new captions at every step (its worst case, a first epoch),
   and the precomputed table (``python -m xsample_openclip.precompute``);
3. train: ``python -m open_clip_train.main`` for one epoch, ``--precision amp_bf16``: ``--loss clip``,
   ``--loss xsample --xsample-embeddings TABLE`` and ``--loss xsample`` (online encoder on the GPU);
   a run that runs out of memory halves the batch for all three, once;
4. bench: ``python -m xsample_openclip.bench --device cuda`` over ``--bench-sections`` (all but ``e2e``,
   which step 3 replaces at full size) with the time left; its JSON is written after every section, so
   a timeout keeps the finished ones.
Writes OUT/gpu_check.json (every figure, the commands) and OUT/gpu_check.md (tables, the bench's output).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .cli import SECTIONS
from .common import markdown_table, median
from .data import text_captions, write_shape_csv
from .e2e import parse_steps, trainer_command, trainer_env

BENCH_SECTIONS = [s for s in SECTIONS if s != "e2e"]
WARMUP_STEPS = 3     # left out of the step-time medians: CUDA start-up, kernel selection, loader start
RUNS = ("--loss clip", "--loss xsample, precomputed table", "--loss xsample, online encoder")
OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m xsample_openclip.bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check", help="folder for data, logs and the reports")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the largest that fits)")
    p.add_argument("--max-batch", type=int, default=32768, help="the probe stops here")
    p.add_argument("--steps", type=int, default=20, help="training steps per run (one epoch)")
    p.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)),
                   help="data loader workers per training run")
    p.add_argument("--budget-s", type=float, default=570.0, help="wall-clock limit of the whole check")
    p.add_argument("--bench-sections", nargs="+", default=BENCH_SECTIONS, choices=SECTIONS, metavar="SECTION")
    p.add_argument("--dry-run", action="store_true", help="write and print the plan; run nothing (no GPU needed)")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # step 1, in its own process
    args = p.parse_args(argv)
    for name in ("batch", "max_batch", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.steps <= WARMUP_STEPS:
        p.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps left out of the medians, got {args.steps}")
    return args


class Plan:
    """Every path and command of one check, for a given batch."""

    def __init__(self, args, batch):
        self.args, self.batch = args, batch
        self.out = Path(args.out).resolve()
        self.data = self.out / "data" / "train.csv"
        self.table = self.out / "table"
        self.bench_json = self.out / "bench.json"

    def probe(self):
        return [sys.executable, "-m", "xsample_openclip.bench.gpu_check", "--probe", "--model", self.args.model,
                "--max-batch", str(self.args.max_batch)]

    def precompute(self):
        return [sys.executable, "-m", "xsample_openclip.precompute", "--model", self.args.model, "--train-data",
                str(self.data), "--out", str(self.table), "--device", "cuda", "--batch-size", "4096"]

    def train(self, label):
        flags = {RUNS[0]: ["--loss", "clip"],
                 RUNS[1]: ["--loss", "xsample", "--xsample-embeddings", str(self.table)],
                 RUNS[2]: ["--loss", "xsample"]}[label]
        return trainer_command(self.data, self.args.model, self.batch, 1, self.args.workers, "cuda", "amp_bf16",
                               self.out / "logs", self.run_name(label), flags)

    def run_name(self, label):
        return f"b{self.batch}_run{RUNS.index(label)}"

    def bench(self):
        return [sys.executable, "-m", "xsample_openclip.bench", "--device", "cuda", "--sections",
                *self.args.bench_sections, "--json", str(self.bench_json)]

    def commands(self):
        return dict(probe=self.probe(), precompute=self.precompute(), bench=self.bench(),
                    train={label: self.train(label) for label in RUNS})


# --- step 1: the largest batch that fits (runs in its own process) ---------------------------------

def largest_batch(fits, start: int, limit: int) -> int:
    """The largest batch ``fits(batch)`` accepts: doubling from ``start`` up to ``limit``, then one midpoint
    between the last fit and the first failure; 0 when even ``start`` does not fit."""
    good, bad, batch = 0, None, start
    while batch <= limit:
        if not fits(batch):
            bad = batch
            break
        good, batch = batch, batch * 2
    if good and bad and (good + bad) // 2 > good and fits((good + bad) // 2):
        good = (good + bad) // 2
    return good


def probe(args):
    """Print {"batch": the largest batch whose amp_bf16 X-Sample training step fits} as one JSON line."""
    import open_clip
    import torch

    from .. import model_configs
    from ..losses.softmax import XSampleLoss

    model_configs.register()
    model = open_clip.create_model(args.model, device="cuda")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    context = open_clip.get_tokenizer(args.model).context_length
    loss_fn = XSampleLoss(tau_s=0.2)
    peaks = {}

    def fits(batch):
        torch.cuda.reset_peak_memory_stats()
        try:
            images = torch.randn(batch, 3, *size, device="cuda")
            tokens = torch.randint(1, 49000, (batch, context), device="cuda")
            captions = torch.nn.functional.normalize(torch.randn(batch, 384, device="cuda"), dim=-1)
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                image_f, text_f, scale = model(images, tokens)[:3]
                loss = loss_fn(image_f, text_f, scale, caption_embeddings=captions)
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            peaks[batch] = torch.cuda.max_memory_allocated()
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    batch = largest_batch(fits, 256, args.max_batch)
    print(json.dumps({"batch": batch, "peak_bytes": peaks.get(batch, 0), "device": torch.cuda.get_device_name()}))


# --- steps 2-4 --------------------------------------------------------------------------------------

class Clock:
    """What is left of the budget; subprocess timeouts come out of it."""

    def __init__(self, budget_s):
        self.deadline = time.monotonic() + budget_s

    def left(self, reserve: float = 0.0) -> float:
        return self.deadline - time.monotonic() - reserve


def _run(cmd, timeout, log_path):
    """Run ``cmd`` (stdout and stderr to ``log_path``); returns (return code, or 'timeout' or 'skipped ...',
    seconds, stdout, stderr)."""
    if timeout <= 5:
        return "skipped (no time left)", 0.0, "", ""
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=trainer_env(threads=4), capture_output=True, text=True, timeout=timeout)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        code, stdout, stderr = "timeout", _text(err.stdout), _text(err.stderr)
    Path(log_path).write_text(stdout + stderr)
    return code, time.monotonic() - start, stdout, stderr


def _text(data):
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def step_summary(log_text: str, batch: int) -> dict:
    """Medians of OpenCLIP's logged step times after the warm-up steps; samples/s from the batch time."""
    steps = parse_steps(log_text)[WARMUP_STEPS:]
    if not steps:
        return dict(steps=0)
    batch_t, data_t = median([s[3] for s in steps]), median([s[2] for s in steps])
    return dict(steps=len(steps), step_s=batch_t, data_s=data_t, compute_s=batch_t - data_t,
                samples_per_s=batch / batch_t)


def _train_all(plan, clock, report):
    """The three training runs at ``plan.batch``; True when one ran out of memory."""
    for label in RUNS:
        name = plan.run_name(label)
        code, seconds, stdout, stderr = _run(plan.train(label), min(240.0, clock.left(reserve=60)),
                                             plan.out / f"{name}.log")
        entry = dict(label=label, batch=plan.batch, command=plan.train(label), returncode=code, wall_s=seconds)
        out_log = plan.out / "logs" / name / "out.log"
        if out_log.is_file():
            entry.update(step_summary(out_log.read_text(), plan.batch))
        report["runs"].append(entry)
        if code != 0 and any(m in stdout + stderr for m in OOM_MARKERS):
            return True
    return False


def check(args):
    """Steps 1-4 on the GPU; writes the reports and returns the report dict."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "--dry-run writes the plan without one")
    clock = Clock(args.budget_s)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = dict(device=torch.cuda.get_device_name(), model=args.model, steps=args.steps, runs=[], notes=[])
    batch = args.batch or _probed_batch(Plan(args, 0), clock, report)
    rows = batch * args.steps
    write_shape_csv(out / "data", n=rows, px=64, captions=text_captions(rows, seed=5))
    plan = Plan(args, batch)
    code, seconds, _, _ = _run(plan.precompute(), clock.left(reserve=120), out / "precompute.log")
    report["precompute"] = dict(command=plan.precompute(), returncode=code, wall_s=seconds, captions=rows)
    if code != 0:
        report["notes"].append(f"precompute failed ({code}): no training runs; see {out / 'precompute.log'}")
    elif _train_all(plan, clock, report) and batch > 1:
        report["notes"].append(f"batch {batch} ran out of memory in the trainer; all runs repeated at {batch // 2}")
        plan = Plan(args, batch // 2)
        _train_all(plan, clock, report)
    report["batch"] = plan.batch
    code, seconds, stdout, _ = _run(plan.bench(), clock.left(reserve=10), out / "bench.log")
    report["bench"] = dict(command=plan.bench(), returncode=code, wall_s=seconds, json=str(plan.bench_json))
    _write_reports(out, report, stdout)
    return report


def _probed_batch(plan, clock, report):
    code, seconds, stdout, _ = _run(plan.probe(), min(150.0, clock.left(reserve=300)), plan.out / "probe.log")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if code != 0 or not lines or not json.loads(lines[-1])["batch"]:
        raise SystemExit(f"the batch probe failed ({code}); see {plan.out / 'probe.log'}, or pass --batch N")
    report["probe"] = dict(json.loads(lines[-1]), command=plan.probe(), wall_s=seconds)
    return report["probe"]["batch"]


def _write_reports(out, report, bench_output):
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown_report(report, bench_output))


def markdown_report(report, bench_output: str) -> str:
    """The training runs as a table (ratios against ``--loss clip``), the notes, then the bench's output."""
    by_label = {r["label"]: r for r in report["runs"] if r.get("steps")}
    ref = by_label.get(RUNS[0], {}).get("step_s")
    rows = []
    for r in report["runs"]:
        if not r.get("steps"):
            rows.append([r["label"], r["batch"], f"failed ({r['returncode']})", "", "", "", ""])
            continue
        ratio = f"**{r['step_s'] / ref:.2f}**" if ref else "-"
        rows.append([r["label"], r["batch"], f"{r['step_s']:.3f}", ratio, f"{r['data_s']:.3f}",
                     f"{r['compute_s']:.3f}", f"{r['samples_per_s']:,.0f}"])
    probe = report.get("probe")
    lines = [f"# gpu_check: {report['device']}, {report['model']}, --precision amp_bf16", ""]
    if probe:
        lines += [f"Largest batch whose X-Sample training step fits (probe): {probe['batch']} "
                  f"(peak {probe['peak_bytes'] / 2 ** 30:.1f} GiB allocated).", ""]
    lines += [markdown_table(["run", "batch", "step s (median)", "ratio vs --loss clip", "data wait s",
                              "step minus data wait s", "samples/s"], rows), "",
              f"OpenCLIP's Batch (t) per step, the first {WARMUP_STEPS} steps left out.", ""]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines + ["", bench_output])


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.probe:
        return probe(args)
    if args.dry_run:
        plan = Plan(args, args.batch or "BATCH")
        plan.out.mkdir(parents=True, exist_ok=True)
        commands = plan.commands()
        (plan.out / "plan.json").write_text(json.dumps(commands, indent=2))
        for name, cmd in [(k, v) for k, v in commands.items() if k != "train"] + list(commands["train"].items()):
            print(f"{name}: {' '.join(cmd)}")
        return commands
    return check(args)


if __name__ == "__main__":
    main()
