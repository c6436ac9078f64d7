"""The benchmark runs (``--quick``) and parses OpenCLIP's log; precompute's scaling parts (spilled scan,
worker processes, missing-caption check, sampling) agree with the simple in-memory path."""
import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from open_clip import get_tokenizer

from xsample_openclip import bench, bench_data, precompute
from xsample_openclip.precompute import (CaptionScan, build_table, iter_captions, sample_captions,
                                         unique_captions)

LOG = """\
2026-11-28,20:00:01 | INFO | Train Epoch: 0 [ 64/512 (12%)] Data (t): 0.210 Batch (t): 0.912, 70.1/s, 70.1/s/gpu LR: 0.000500 Logit Scale: 14.286 Contrastive_loss: 4.1589 (4.1589) Loss: 4.1589 (4.1589)
2026-11-28,20:00:01 | INFO | Train Epoch: 0 [128/512 (25%)] Data (t): 0.001 Batch (t): 0.231, 277.0/s, 277.0/s/gpu LR: 0.001000 Logit Scale: 14.280 Contrastive_loss: 4.1 (4.1)
2026-11-28,20:00:02 | INFO | Train Epoch: 1 [ 64/512 (12%)] Data (t): 0.190 Batch (t): 0.800, 80.0/s, 80.0/s/gpu LR: 0.001000 Logit Scale: 14.280 Xsample_loss: 4.0 (4.0)
2026-11-28,20:00:02 | INFO | Train Epoch: 1 [128/512 (25%)] Data (t): 0.001 Batch (t): 0.250, 256.0/s, 256.0/s/gpu LR: 0.001000 Logit Scale: 14.280 Xsample_loss: 4.0 (4.0)
"""


def test_log_parsing_and_steady_steps():
    steps = bench.parse_steps(LOG)
    assert steps == [(0, 64, 0.21, 0.912), (0, 128, 0.001, 0.231), (1, 64, 0.19, 0.8), (1, 128, 0.001, 0.25)]
    assert bench._steady(steps) == [(0, 0.231), (1, 0.25)]


def test_quick_bench_in_process(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main(["--quick", "--sections", "loss", "scale", "targets", "precompute", "--json", str(out),
                          "--workdir", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    assert "X-Sample vs ClipLoss" in printed and "GPU figures" in printed
    assert json.loads(out.read_text())["loss"]
    for rec in results["loss"]:
        assert math.isfinite(rec["time_ratio"]) and 0 < rec["memory_ratio"] < 1.2, rec
    for rec in results["scale"]:
        assert rec["xsample_bytes"] <= 1.25 * rec["clip_bytes"], rec
    t = results["targets"]
    assert t["minilm_captions_per_s"] > 0 and 0 < t["share_table"] < 0.5 and t["share_online_cold"] > t["share_table"]
    assert t["cache_hit_rates"]["100000"] == pytest.approx(2 / 3, abs=0.01)
    p = results["precompute"]
    assert p["distinct"] == 300 and p["check"]["missing_distinct"] == 100 and p["check"]["missing"] == 200


def test_quick_end_to_end_runs_the_real_trainer(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "xsample_openclip.bench", "--quick", "--sections", "e2e",
                           "--json", str(tmp_path / "e2e.json"), "--workdir", str(tmp_path / "work"),
                           "--e2e-workers", "0"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r["run"]: r for r in json.loads((tmp_path / "e2e.json").read_text())["e2e"]}
    assert len(runs) == 3
    online = runs["--loss xsample, online encoder"]
    assert online["cache_misses"] == 48 and online["cache_hits"] == 48  # 3 steps x 16, 2 epochs
    assert runs["--loss xsample, precomputed table"]["target_share"] < online["target_share"]
    for r in runs.values():
        assert r["steps"] == 6 and r["later_step_s"] > 0


class TinyEncoder:
    name, dim = "tiny", 3

    def encode(self, texts):
        v = torch.tensor([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=torch.float32)
        return torch.nn.functional.normalize(v, dim=-1)


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("xs-tiny-vit-32")


def test_spilled_scan_equals_in_memory_scan(tmp_path, tokenizer):
    captions = bench_data.text_captions(600, seed=5) + ["Ünïcödé café — naïve", "a dog", "a  DOG", ""] * 3
    scan = CaptionScan.run(iter(captions), tokenizer, tmp_path / "scan")
    found, total = unique_captions(iter(captions), tokenizer)
    assert total == scan.total == len(captions) and len(scan) == len(found)
    np.testing.assert_array_equal(scan.keys, np.array(sorted(found), dtype=np.uint64))
    assert scan.texts(0, len(scan)) == [found[int(k)] for k in scan.keys]
    scan.remove()
    assert not (tmp_path / "scan").exists()


def test_worker_processes_build_the_same_table(tmp_path, tokenizer):
    pattern = bench_data.write_text_shards(tmp_path / "shards", bench_data.text_captions(1500, seed=6), shards=3)
    one = build_table(tmp_path / "a", iter_captions(pattern), tokenizer, TinyEncoder(), "m")
    two = build_table(tmp_path / "b", iter_captions(pattern), tokenizer, TinyEncoder(), "m", workers=2)
    np.testing.assert_array_equal(np.asarray(one.keys), np.asarray(two.keys))
    np.testing.assert_array_equal(np.asarray(one.embeddings), np.asarray(two.embeddings))
    assert not (tmp_path / "a" / "scan").exists() and one.meta["captions_read"] == 1500


def test_check_reports_missing_captions(tmp_path, tokenizer, caplog, capsys):
    pattern = bench_data.write_text_shards(tmp_path / "shards", ["a dog", "a cat", "a cat"], shards=1)
    build_table(tmp_path / "t", iter(["a dog"]), tokenizer, TinyEncoder(), "xs-tiny-vit-32")
    caplog.set_level(logging.INFO)
    code = precompute.main(["--model", "xs-tiny-vit-32", "--train-data", pattern, "--out", str(tmp_path / "t"),
                            "--check"])
    assert code == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "captions": 3, "distinct": 2, "missing_distinct": 1, "missing": 2}
    assert "2 of 3 training captions (1 of 2 distinct) are missing" in caplog.text


def test_sample_captions_spreads_over_sources_and_reports_problems(tmp_path):
    caps = [f"caption {i}" for i in range(40)]
    pattern = bench_data.write_text_shards(tmp_path / "s", caps, shards=4)
    (tmp_path / "s" / "00002.tar").write_bytes(b"not a tar file" * 50)
    sample, report = sample_captions(pattern + "::/nowhere/x.tar", 12, per_source=4)
    assert report["sources"] == 5 and report["remote_or_missing"] == 1
    assert report["unreadable_shards"] == [str(tmp_path / "s" / "00002.tar")]
    assert len(sample) == 12 and sample[:4] == caps[:4]  # first shard first, then spread over the others
    everything, report = sample_captions(pattern, -1)
    assert len(everything) == 30 and report["sources_read"] == 4
