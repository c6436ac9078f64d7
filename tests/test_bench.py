"""The benchmark keeps its promises: every section runs (``--quick``) and prints its table; stock and X-Sample
are timed in the same run, interleaved, and every printed ratio is recomputed here from the raw timings
and bytes in the JSON; the e2e section runs OpenCLIP's trainer as a user does; the GPU check plans its
commands and parses its logs without a GPU. Also precompute's scaling parts (spilled scan, worker
processes, missing-caption check, sampling) against the simple in-memory path."""
import contextlib
import io
import json
import logging
import os
import random
import re
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch
from open_clip import get_tokenizer

from loss_memory import peak_tensor_bytes
from xsample_openclip import precompute
from xsample_openclip.bench import cli, data, e2e, gpu_check, measure
from xsample_openclip.data import writers
from xsample_openclip.precompute import CaptionScan, build_table, unique_captions
from xsample_openclip.targets.sources import iter_captions, sample_captions

LOG = """\
2026-11-28,20:00:01 | INFO | Loss: clip (OpenCLIP's own selection): ClipLoss
2026-11-28,20:00:01 | INFO | Train Epoch: 0 [ 64/512 (12%)] Data (t): 0.210 Batch (t): 0.912, 70.1/s, 70.1/s/gpu LR: 0.000500 Logit Scale: 14.286 Contrastive_loss: 4.1589 (4.1589) Loss: 4.1589 (4.1589)
2026-11-28,20:00:01 | INFO | Train Epoch: 0 [128/512 (25%)] Data (t): 0.001 Batch (t): 0.231, 277.0/s, 277.0/s/gpu LR: 0.001000 Logit Scale: 14.280 Contrastive_loss: 4.1 (4.1)
2026-11-28,20:00:02 | INFO | Train Epoch: 1 [ 64/512 (12%)] Data (t): 0.190 Batch (t): 0.800, 80.0/s, 80.0/s/gpu LR: 0.001000 Logit Scale: 14.280 Xsample_loss: 4.0 (4.0)
2026-11-28,20:00:02 | INFO | Train Epoch: 1 [128/512 (25%)] Data (t): 0.001 Batch (t): 0.250, 256.0/s, 256.0/s/gpu LR: 0.001000 Logit Scale: 14.280 Xsample_loss: 4.0 (4.0)
"""

#: Every section's heading (the start of it) and the tables it prints.
HEADINGS = {"loss": ["## Loss forward+backward"],
            "sigmoid": ["## Sigmoid loss forward+backward", "## Sigmoid loss per rank at scale"],
            "scale": ["## Per-rank memory at scale"], "host": ["## Host time per step"],
            "targets": ["## Caption targets"], "startup": ["## Start-up cost of the hook"],
            "guard": ["## Non-finite guard"], "precompute": ["## precompute"],
            "e2e": ["## End to end"]}


def printed_tables(text):
    """{heading line: number of Markdown table rows printed under it}."""
    out, heading = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line
            out[heading] = 0
        elif heading and line.startswith("| ") and not line.startswith("|---"):
            out[heading] += 1
    return out


def assert_tables_printed(text, sections, rows=None):
    tables = printed_tables(text)
    for section in sections:
        for start in HEADINGS[section]:
            found = [h for h in tables if h.startswith(start)]
            assert found and tables[found[0]] >= 2, (section, start, tables)  # header row + data rows
    for start, count in (rows or {}).items():
        assert [n for h, n in tables.items() if h.startswith(start)] == [count + 1], (start, tables)


def assert_same_run_comparison(rec):
    """Both losses timed in the same run, pair by pair in ABBA order; medians and ratios from those timings."""
    stock, xs = rec["stock_times_s"], rec["xsample_times_s"]
    assert len(stock) == len(xs) == len(rec["stock_first"]) >= 2, rec
    assert rec["stock_first"] == [r % 2 == 0 for r in range(len(stock))]
    assert min(stock) > 0 and min(xs) > 0 and rec["stock_bytes"] > 0 and rec["xsample_bytes"] > 0, rec
    assert rec["stock_s"] == statistics.median(stock) and rec["xsample_s"] == statistics.median(xs)
    assert rec["time_ratio"] == pytest.approx(statistics.median(xs) / statistics.median(stock), rel=1e-12)
    assert rec["memory_ratio"] == pytest.approx(rec["xsample_bytes"] / rec["stock_bytes"], rel=1e-12)


# --- the in-process sections ------------------------------------------------------------------------

SECTIONS = ["loss", "sigmoid", "scale", "host", "targets", "startup", "guard", "precompute"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick in-process run of every section but e2e: (JSON read back, what it printed)."""
    tmp = tmp_path_factory.mktemp("bench")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cli.main(["--quick", "--sections", *SECTIONS, "--json", str(tmp / "bench.json"),
                  "--workdir", str(tmp / "work")])
    return json.loads((tmp / "bench.json").read_text()), buffer.getvalue()


def test_every_section_prints_its_table(quick):
    js, text = quick
    # --quick: 2 precisions x 1 width x 2 local batches; worlds 1, 4, 16; 7 host rows; 3 start-up variants
    assert_tables_printed(text, SECTIONS,
                          rows={"## Loss forward+backward": 4, "## Sigmoid loss forward+backward": 4,
                                "## Sigmoid loss per rank at scale": 3, "## Per-rank memory at scale": 3,
                                "## Host time per step": 7, "## Start-up cost of the hook": 3,
                                "## Non-finite guard": 4})
    assert set(js["section_s"]) == set(SECTIONS)
    assert js["command"].startswith("python -m xsample_openclip.bench --quick")


def test_loss_ratios_come_from_the_same_runs_timings(quick):
    js, _ = quick
    local = js["loss"] + js["sigmoid"]["local"]
    assert len(js["loss"]) == len(js["sigmoid"]["local"]) == 4
    for rec in local:
        assert_same_run_comparison(rec)
        assert rec["n"] in (128, 256) and rec["width"] == 256 and rec["dtype"] in ("fp32", "bf16")
        assert len(rec["targets_times_s"]) == len(rec["stock_times_s"]) and min(rec["targets_times_s"]) > 0
        assert rec["targets_s"] == statistics.median(rec["targets_times_s"])


def test_per_rank_memory_grows_with_the_global_batch_not_its_square(quick):
    js, _ = quick
    for rec in js["scale"] + js["sigmoid"]["ranks"]:
        assert_same_run_comparison(rec)
        assert rec["global_batch"] == 32 * rec["world_size"]
    for records in (js["scale"], js["sigmoid"]["ranks"]):
        by_world = {r["world_size"]: r for r in records}
        # 4x the world, at most ~4x the memory: linear in N (a square would be 16x)
        assert by_world[16]["xsample_bytes"] <= 4.5 * by_world[4]["xsample_bytes"], records
        assert by_world[16]["stock_bytes"] <= 4.5 * by_world[4]["stock_bytes"], records


def test_host_parts_add_up(quick):
    js, _ = quick
    h = js["host"]
    t = h["table"]
    assert h["batch"] == 256 and h["table_rows"] == 4096
    for part in ("keys", "lookup", "call", "call_and_transfer"):
        assert len(t[part]["times_s"]) == 10 and min(t[part]["times_s"]) > 0, part
        assert t[part]["median_s"] == statistics.median(t[part]["times_s"])
    rest = [c - k - lk for c, k, lk in zip(t["call"]["times_s"], t["keys"]["times_s"], t["lookup"]["times_s"])]
    assert t["rest"]["times_s"] == pytest.approx(rest)
    online = h["online"]
    assert online["misses"] == 256 and online["hits"] == 256 * 10 and online["call"]["median_s"] > 0


def test_startup_hook_imports_only_itself_and_the_standard_library(quick):
    js, _ = quick
    s = js["startup"]
    assert s["hook_modules"][-1] == "xsample_openclip.startup" and "xsample_openclip" in s["hook_modules"]
    assert s["foreign_modules"] == []
    assert set(s["wall_s"]) == {"hook active", "XSAMPLE_OPENCLIP_DISABLE=1", "python -S (no site)"}
    for w in s["wall_s"].values():
        assert len(w["values"]) == 4 and w["min"] > 0
    assert len(s["hook_import_us"]["values"]) == 4 and s["hook_import_us"]["min"] > 0
    assert 0 < s["finder_ns_per_import"] < 100_000


def test_guard_costs_are_measured_on_two_ranks(quick):
    js, _ = quick
    g = js["guard"]
    assert list(g)[:3] == ["record (per loss call)", "check, one process", "check, distributed (all_reduce + read)"]
    assert len(g) == 4 and list(g)[3].startswith("bare all_reduce of ")
    for rec in g.values():
        assert len(rec["per_rank_median_us"]) == 2 and rec["min_us"] > 0 and rec["median_us"] >= rec["min_us"]


def test_targets_and_precompute_figures(quick):
    js, _ = quick
    t = js["targets"]
    assert t["minilm_captions_per_s"] > 0 and 0 < t["share_table"] < t["share_online_cold"]
    assert t["share_table"] == pytest.approx(t["table_s"] / (t["step_s"] + t["table_s"]))
    assert t["cache_hit_rates"]["100000"] == pytest.approx(2 / 3, abs=0.01)  # 3 epochs, all cached after the first
    p = js["precompute"]
    assert p["distinct"] == 300 and p["check"]["missing_distinct"] == 100 and p["check"]["missing"] == 200
    assert p["scan_rate"] == pytest.approx(p["captions"] / p["scan_s"])


def test_bench_meter_agrees_with_the_independent_tensor_meter():
    from open_clip.loss import SigLipLoss

    from xsample_openclip.losses.softmax import XSampleLoss

    g = torch.Generator().manual_seed(0)
    img, txt, cap = (torch.nn.functional.normalize(torch.randn(96, d, generator=g), dim=-1) for d in (64, 64, 32))
    steps = [lambda: measure.backward_step(lambda i, t, s: XSampleLoss(tau_s=0.2)(i, t, s, caption_embeddings=cap),
                                           (img, txt, torch.tensor(20.0))),
             lambda: measure.backward_step(SigLipLoss(), (img, txt, torch.tensor(10.0), torch.tensor(-10.0)))]
    for step in steps:
        profiled, counted = measure.peak_memory(step, torch.device("cpu")), peak_tensor_bytes(step)
        assert profiled == pytest.approx(counted, rel=0.01), (profiled, counted)  # measured: within 12 bytes


# --- e2e: OpenCLIP's trainer in subprocesses ------------------------------------------------------------

def test_log_parsing_and_steady_steps():
    steps = e2e.parse_steps(LOG)
    assert steps == [(0, 64, 0.21, 0.912), (0, 128, 0.001, 0.231), (1, 64, 0.19, 0.8), (1, 128, 0.001, 0.25)]
    assert e2e.steady(steps) == [(0, 0.231), (1, 0.25)]
    assert e2e.LOSS_RE.findall(LOG) == ["Loss: clip (OpenCLIP's own selection): ClipLoss"]


def test_quick_end_to_end_runs_the_real_trainer(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "xsample_openclip.bench", "--quick", "--sections", "e2e",
                           "--json", str(tmp_path / "e2e.json"), "--workdir", str(tmp_path / "work"),
                           "--e2e-workers", "0"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_tables_printed(proc.stdout, ["e2e"], rows={"## End to end": 5})
    runs = {r["run"]: r for r in json.loads((tmp_path / "e2e.json").read_text())["e2e"]}
    expected = {"stock ClipLoss (--loss clip)": "ClipLoss", "--loss xsample, online encoder": "online encoder",
                "--loss xsample, precomputed table": "from table", "stock SigLipLoss (--loss clip --siglip)":
                "SigLipLoss", "--loss xsample-siglip, precomputed table": "xsample-siglip"}
    assert set(runs) == set(expected)
    for label, r in runs.items():
        assert r["steps"] == 6 and r["later_step_s"] > 0, r  # 3 steps x 2 epochs
        assert len(r["loss_lines"]) == 1 and expected[label] in r["loss_lines"][0], r["loss_lines"]
        ref = runs[r["reference"]]
        assert r["later_ratio"] == pytest.approx(r["later_step_s"] / ref["later_step_s"])
        assert r["epoch1_ratio"] == pytest.approx(r["epoch1_step_s"] / ref["epoch1_step_s"])
        if "xsample" in label:  # the loss saw every caption of both epochs: 3 steps x 16
            assert [re.search(r": (\d+) captions in (\d+) batches", line).groups() for line in r["caption_lines"]] \
                == [("48", "3"), ("48", "3")]
        else:
            assert r["caption_lines"] == [] and r["reference"] == label


# --- the GPU check, without a GPU ---------------------------------------------------------------------

def test_gpu_check_dry_run_plans_every_command(tmp_path, capsys):
    commands = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--batch", "4096", "--steps", "12"])
    assert json.loads((tmp_path / "plan.json").read_text()) == commands
    train = commands["train"]
    assert list(train) == list(gpu_check.RUNS)
    for label, cmd in train.items():
        text = " ".join(cmd)
        assert cmd[1:3] == ["-m", "open_clip_train.main"] and "--model ViT-B-32" in text
        assert "--precision amp_bf16" in text and "--batch-size 4096" in text and "--device cuda" in text
    assert train["--loss clip"][-2:] == ["--loss", "clip"]
    assert train["--loss xsample, precomputed table"][-4:] == ["--loss", "xsample", "--xsample-embeddings",
                                                               str(tmp_path / "table")]
    assert train["--loss xsample, online encoder"][-2:] == ["--loss", "xsample"]
    assert commands["bench"][1:5] == ["-m", "xsample_openclip.bench", "--device", "cuda"]
    assert "e2e" not in commands["bench"] and "loss" in commands["bench"]
    assert "--probe" in commands["probe"] and commands["precompute"][1:3] == ["-m", "xsample_openclip.precompute"]
    assert "--loss xsample, online encoder:" in capsys.readouterr().out


def test_gpu_check_arguments_are_checked():
    assert gpu_check.parse_args([]).batch is None
    for bad in (["--steps", "3"], ["--batch", "0"], ["--max-batch", "-1"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_gpu_check_batch_search():
    assert gpu_check.largest_batch(lambda b: b <= 5000, 256, 32768) == 4096  # 8192 fails, midpoint 6144 too
    assert gpu_check.largest_batch(lambda b: b <= 7000, 256, 32768) == 6144
    assert gpu_check.largest_batch(lambda b: True, 256, 1024) == 1024
    assert gpu_check.largest_batch(lambda b: False, 256, 1024) == 0


def test_gpu_check_step_summary_and_report():
    lines = [f"x | INFO | Train Epoch: 0 [{i * 8}/80 (10%)] Data (t): 0.100 Batch (t): {t:.3f}, 1/s" for i, t in
             enumerate([5.0, 2.0, 1.5, 1.0, 1.2, 1.1], 1)]
    summary = gpu_check.step_summary("\n".join(lines), batch=8)
    assert summary == pytest.approx(dict(steps=3, step_s=1.1, data_s=0.1, compute_s=1.0, samples_per_s=8 / 1.1))
    runs = [dict(label=label, batch=8, returncode=0, **summary) for label in gpu_check.RUNS[:2]]
    runs.append(dict(label=gpu_check.RUNS[2], batch=8, returncode=1, steps=0))
    text = gpu_check.markdown_report(dict(device="GPU", model="ViT-B-32", runs=runs, notes=["a note"]), "BENCH")
    assert "| --loss xsample, precomputed table | 8 | 1.100 | **1.00** |" in text
    assert "| --loss xsample, online encoder | 8 | failed (1) |" in text
    assert text.endswith("BENCH") and "- a note" in text


def test_gpu_check_halves_the_batch_once_after_an_out_of_memory_run(tmp_path, monkeypatch):
    """The orchestration with a stand-in for every subprocess: the table run at batch 64 runs out of memory,
    so all three runs repeat at 32; the reports hold every run, the note and the bench's output."""
    calls = []

    def fake_run(cmd, timeout, log_path):
        calls.append(cmd)
        if "open_clip_train.main" not in cmd:
            return 0, 1.0, "BENCH OUTPUT" if "xsample_openclip.bench" in cmd else "", ""
        batch, name = int(cmd[cmd.index("--batch-size") + 1]), cmd[cmd.index("--name") + 1]
        if batch == 64 and "--xsample-embeddings" in cmd:
            return 1, 1.0, "", "torch.OutOfMemoryError: CUDA out of memory"
        log = tmp_path / "logs" / name / "out.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join(f"x | INFO | Train Epoch: 0 [{i}/9 (1%)] Data (t): 0.010 Batch (t): 0.500, 1/s"
                                 for i in range(10)))
        return 0, 1.0, "", ""

    monkeypatch.setattr(gpu_check, "_run", fake_run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stand-in GPU")
    report = gpu_check.main(["--out", str(tmp_path), "--batch", "64", "--steps", "5"])
    assert [r["batch"] for r in report["runs"]] == [64, 64, 32, 32, 32] and report["batch"] == 32
    assert [r["steps"] for r in report["runs"] if r["batch"] == 32] == [7, 7, 7]  # 10 logged, 3 warm-up
    assert report["notes"] == ["batch 64 ran out of memory in the trainer; all runs repeated at 32"]
    assert len((tmp_path / "data" / "train.csv").read_text().splitlines()) == 64 * 5 + 1
    assert sum("--probe" in c for c in calls) == 0 and calls[-1][2] == "xsample_openclip.bench"
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| --loss xsample, online encoder | 32 | 0.500 | **1.00** |" in md and md.endswith("BENCH OUTPUT")
    assert json.loads((tmp_path / "gpu_check.json").read_text())["batch"] == 32


def test_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu_check.main(["--out", str(tmp_path)])


# --- the benchmark's generated data -----------------------------------------------------------------------

def test_text_captions_are_distinct_and_reproducible(tmp_path):
    caps = data.text_captions(5000, seed=1)
    assert len(set(caps)) == 5000 and caps == data.text_captions(5000, seed=1) != data.text_captions(5000, seed=2)
    assert all(6 <= len(c.split()) <= 14 for c in caps)
    with pytest.raises(ValueError):
        data.text_captions(data.TEXT_COMBINATIONS + 1)
    pattern = writers.write_text_shards(tmp_path / "s", caps[:10], shards=3)
    assert pattern == str(tmp_path / "s" / "{000000..000002}.tar")
    assert list(iter_captions(pattern)) == caps[:10]


def test_shape_csv_reuses_images_and_takes_captions(tmp_path):
    path = data.write_shape_csv(tmp_path / "a", n=1030, px=16)
    rows = path.read_text().splitlines()
    assert rows[0] == "filepath\ttitle" and len(rows) == 1031
    assert len(list((tmp_path / "a" / "images").iterdir())) == 1024  # one file per distinct shape
    assert rows[1].split("\t")[0] == rows[1025].split("\t")[0] and rows[1].split("\t")[1] == rows[1025].split("\t")[1]
    caps = data.text_captions(5, seed=0)
    path = data.write_shape_csv(tmp_path / "b", n=5, px=16, captions=caps)
    assert list(iter_captions(str(path))) == caps
    with pytest.raises(ValueError, match="2 captions for 5 rows"):
        data.write_shape_csv(tmp_path / "c", n=5, captions=caps[:2])


# --- precompute's scaling parts -------------------------------------------------------------------------

WORDS = ("red", "green", "dog", "cat", "kite", "boat", "runs", "sits", "on", "a", "beach", "street", "at", "night")


def many_captions(n, seed):
    """n distinct sentence-like captions of 8 words after a number."""
    rng = random.Random(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS) for _ in range(8)) for i in range(n)]


class TinyEncoder:
    name, dim = "tiny", 3

    def encode(self, texts):
        v = torch.tensor([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=torch.float32)
        return torch.nn.functional.normalize(v, dim=-1)


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("xs-tiny-vit-32")


def test_spilled_scan_equals_in_memory_scan(tmp_path, tokenizer):
    captions = many_captions(600, seed=5) + ["Ünïcödé café — naïve", "a dog", "a  DOG", ""] * 3
    scan = CaptionScan.run(iter(captions), tokenizer, tmp_path / "scan")
    found, total = unique_captions(iter(captions), tokenizer)
    assert total == scan.total == len(captions) and len(scan) == len(found)
    np.testing.assert_array_equal(scan.keys, np.array(sorted(found), dtype=np.uint64))
    assert scan.texts(0, len(scan)) == [found[int(k)] for k in scan.keys]
    scan.remove()
    assert not (tmp_path / "scan").exists()


def test_worker_processes_build_the_same_table(tmp_path, tokenizer):
    pattern = writers.write_text_shards(tmp_path / "shards", many_captions(1500, seed=6), shards=3)
    one = build_table(tmp_path / "a", iter_captions(pattern), tokenizer, TinyEncoder(), "m")
    two = build_table(tmp_path / "b", iter_captions(pattern), tokenizer, TinyEncoder(), "m", workers=2)
    np.testing.assert_array_equal(np.asarray(one.keys), np.asarray(two.keys))
    np.testing.assert_array_equal(np.asarray(one.embeddings), np.asarray(two.embeddings))
    assert not (tmp_path / "a" / "scan").exists() and one.meta["captions_read"] == 1500


def test_check_reports_missing_captions(tmp_path, tokenizer, caplog, capsys):
    pattern = writers.write_text_shards(tmp_path / "shards", ["a dog", "a cat", "a cat"], shards=1)
    build_table(tmp_path / "t", iter(["a dog"]), tokenizer, TinyEncoder(), "xs-tiny-vit-32")
    caplog.set_level(logging.INFO)
    code = precompute.main(["--model", "xs-tiny-vit-32", "--train-data", pattern, "--out", str(tmp_path / "t"),
                            "--check"])
    assert code == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: report[k] for k in ("captions", "distinct", "missing_distinct", "missing")} == {
        "captions": 3, "distinct": 2, "missing_distinct": 1, "missing": 2}
    assert "2 of 3 training captions (1 of 2 distinct) are missing" in caplog.text


def test_sample_captions_spreads_over_sources_and_reports_problems(tmp_path):
    caps = [f"caption {i}" for i in range(40)]
    pattern = writers.write_text_shards(tmp_path / "s", caps, shards=4)
    (tmp_path / "s" / "000002.tar").write_bytes(b"not a tar file" * 50)
    sample, report = sample_captions(pattern + "::/nowhere/x.tar", 12, per_source=4)
    assert report["sources"] == 5 and report["remote_or_missing"] == 1
    assert report["report"].unreadable_sources == [str(tmp_path / "s" / "000002.tar")]
    assert len(sample) == 12 and sample[:4] == caps[:4]  # first shard first, then spread over the others
    everything, report = sample_captions(pattern, 100)
    assert len(everything) == 30 and report["sources_read"] == 4
