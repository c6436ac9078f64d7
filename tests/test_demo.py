"""The README's main command, shrunk: one epoch of the 32 px tiny model on the real emoji data; the
summary's numbers are the evaluation's, the paired differences are the per-seed differences."""
import csv
import json
import os
import subprocess
import sys

import pytest


def demo(out, *extra, timeout=900, model="xs-tiny-vit-32"):
    cmd = [sys.executable, "-m", "xsample_openclip.demo", "--out", str(out), "--model", model,
           "--epochs", "1", "--warmup", "5", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = demo(out, "--seeds", "0", "1", "--variant", "xsample=--xsample-tau-s 0.2")
    assert "| zero-shot top-1, 10 concepts |" in proc.stdout
    assert "BG-Gap = mixed_same - mixed_rand (lower is better)" in proc.stdout
    for name in ("comparison-test.png", "loss-curves.png"):
        assert (out / name).stat().st_size > 10_000
    params = (out / "logs" / "xsample-s1" / "params.txt").read_text()
    assert "loss: xsample" in params and "xsample_tau_s: 0.2" in params
    assert "loss: clip" in (out / "logs" / "clip-s0" / "params.txt").read_text()

    with open(out / "eval-test" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows} == {"clip-s0", "clip-s1", "xsample-s0", "xsample-s1"}
    assert all(r["dataset"].startswith(("emoji_cls_test", "emoji_ret_test", "emoji_bg_test")) for r in rows)
    acc = {(r["run"], r["dataset"], r["metric"]): 100 * float(r["value"]) for r in rows}
    summary = json.loads((out / "summary-test.json").read_text())
    top1 = next(r for r in summary["rows"] if r["label"] == "zero-shot top-1, 10 concepts")
    for seed in (0, 1):
        x, c = acc[(f"xsample-s{seed}", "emoji_cls_test", "acc1")], acc[(f"clip-s{seed}", "emoji_cls_test", "acc1")]
        assert top1["values"]["xsample"][str(seed)] == pytest.approx(x)
        assert top1["paired"]["xsample"][str(seed)] == pytest.approx(x - c)
        gap = acc[(f"xsample-s{seed}", "emoji_bg_test", "bg_gap")]
        same, rand = (acc[(f"xsample-s{seed}", f"emoji_bg_test_{v}", "acc1")] for v in ("mixed_same", "mixed_rand"))
        assert gap == pytest.approx(same - rand)

    again = demo(out, "--seeds", "0", "1", "--variant", "xsample=--xsample-tau-s 0.2", timeout=300)
    assert "already have results" in again.stdout + again.stderr


def test_demo_sigmoid_family_and_validation_split(tmp_path):
    out = tmp_path / "sig"
    proc = demo(out, "--family", "sigmoid", "--split", "val", "--dataset", "shapes", model="xs-tiny-sigmoid-32")
    assert "| unseen pairs: colour top-1 (8 colours) |" in proc.stdout and "siglip" in proc.stdout
    assert "loss: xsample-siglip" in (out / "logs" / "xsample-siglip-s0" / "params.txt").read_text()
    siglip = (out / "logs" / "siglip-s0" / "params.txt").read_text()
    assert "loss: clip" in siglip and "siglip: True" in siglip
    with open(out / "eval-val" / "results.csv") as f:
        assert {r["dataset"] for r in csv.DictReader(f)} == {f"shapes_{t}_val" for t in ("colour", "shape", "pair")}
    assert "python -m xsample_openclip.demo.tables" in proc.stdout
    from xsample_openclip.demo import tables

    per_seed = out / "summary-val-per-seed.csv"
    table = (out / "summary-val.md").read_text().strip().split("\n\n")[-1]  # the table after the header
    assert tables.regenerate([per_seed]) == table
    assert per_seed.read_text().splitlines()[1].startswith("siglip-s0,siglip,0,")

    # --probe on the same folder: no run is retrained, and the probe rows are eval.compare's linear-probe numbers
    checkpoints = {p: p.stat().st_mtime_ns for p in (out / "logs").rglob("*.pt")}
    assert len(checkpoints) == 2
    probed = demo(out, "--family", "sigmoid", "--split", "val", "--dataset", "shapes", "--probe",
                  model="xs-tiny-sigmoid-32")
    assert {p: p.stat().st_mtime_ns for p in (out / "logs").rglob("*.pt")} == checkpoints
    assert "| linear probe, unseen pairs: shape top-1 |" in probed.stdout
    with open(out / "eval-val" / "results.csv") as f:
        results = list(csv.DictReader(f))
    lp = {(r["run"], r["dataset"]): 100 * float(r["value"]) for r in results
          if r["task"] == "linear_probe" and r["metric"] == "lp_acc1"}
    assert set(lp) == {(run, f"shapes_{t}_val") for run in ("siglip-s0", "xsample-siglip-s0") for t in ("colour", "shape")}
    summary = json.loads((out / "summary-val.json").read_text())
    rows = {r["label"]: r for r in summary["rows"]}
    for task in ("colour", "shape"):
        row = rows[f"linear probe, unseen pairs: {task} top-1"]
        for run, loss in (("siglip-s0", "siglip"), ("xsample-siglip-s0", "xsample-siglip")):
            assert row["values"][loss]["0"] == pytest.approx(lp[(run, f"shapes_{task}_val")])
    zs = [r for r in results if r["run"] == "siglip-s0" and r["dataset"] == "shapes_colour_val"
          and r["metric"] == "acc1" and r["task"] != "linear_probe"]
    assert len(zs) == 1  # the zero-shot row keeps the zero-shot number
    assert rows["unseen pairs: colour top-1 (8 colours)"]["values"]["siglip"]["0"] == pytest.approx(100 * float(zs[0]["value"]))
