"""The README's main command, shrunk: one epoch of the 32 px tiny model on the real emoji data."""
import csv
import os
import subprocess
import sys


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "xsample_openclip.demo", "--out", str(out), "--model", "xs-tiny-vit-32",
           "--epochs", "1", "--warmup", "5", "--variant", "xsample=--xsample-tau-s 0.2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| zero-shot top-1, 10 concepts |" in proc.stdout
    assert "BG-Gap = same - rand (lower is better)" in proc.stdout
    assert (out / "eval" / "comparison.png").stat().st_size > 10_000
    params = (out / "logs" / "xsample-s0" / "params.txt").read_text()
    assert "loss: xsample" in params and "xsample_tau_s: 0.2" in params
    assert "loss: clip" in (out / "logs" / "clip-s0" / "params.txt").read_text()
    with open(out / "eval" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows} == {"clip-s0", "xsample-s0"}
    acc = {(r["run"], r["dataset"], r["metric"]): float(r["value"]) for r in rows}
    for run in ("clip-s0", "xsample-s0"):
        gap = acc[(run, "emoji_bg", "bg_gap")]
        same, rand = acc[(run, "emoji_bg_mixed_same", "acc1")], acc[(run, "emoji_bg_mixed_rand", "acc1")]
        assert abs(gap - (same - rand)) < 1e-9
    # a second run reuses data, checkpoints and evaluations
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "already have results" in again.stdout + again.stderr
