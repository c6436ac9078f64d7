"""``eval.compare`` end to end on CPU: fixture folders in the real layouts, two tiny checkpoints.

One CLI run (module fixture) evaluates ImageNet-1k, the 8 IN-9 variants (9-way and mapped 1000-way) and
three custom wds sets; the tests then check its JSONs, results.csv, report.md and comparison.png.
Random tiny models score near chance: what is checked is plumbing and arithmetic.
"""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval_fixtures as fx
from xsample_openclip.eval import compare, runner
from xsample_openclip.eval.specs import IN1K_TO_IN9, LINEAR_PROBE, ZEROSHOT_CLASSIFICATION, ZEROSHOT_RETRIEVAL

REPO = Path(__file__).resolve().parents[1]
MODEL = "xs-tiny-vit-32"
RUNS = ("clip", "xsample")
CUDA = torch.cuda.is_available()

# clip_benchmark's accuracy() float()s a 1-element array: fine on the pinned numpy<2.4, but it warns.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_data")
    return {
        "imagenet": fx.imagenet(root / "imagenet"),
        "in9": fx.in9(root / "bg_challenge"),
        # 3 classes: clip_benchmark writes acc5 as a bare NaN; the train split makes it linear-probe-able
        "cls": fx.wds_classification(root / "cls", ["cat", "dog", "car"], per_class=3, train=True),
        "ret": fx.wds_retrieval(root / "ret"),
        "bg": fx.wds_bg_group(root / "bg"),
        "clip": fx.checkpoint(root / "clip_epoch_1.pt", seed=0),
        "xsample": fx.checkpoint(root / "xsample_epoch_1.pt", seed=1, module_prefix=True),  # saved under DDP
    }


def cli_args(data, out):
    return ["--model", MODEL, "--run", f"clip={data['clip']}", "--run", f"xsample={data['xsample']}",
            "--imagenet-root", data["imagenet"], "--in9-root", data["in9"], "--wds", f"cls={data['cls']}",
            "--wds", f"ret={data['ret']}", "--wds", f"bg={data['bg']}", "--bg-gap", "cls-vs-bg=cls,bg/original",
            "--tasks", "zeroshot,linear_probe", "--out", str(out), "--batch-size", "64", "--num-workers", "0"]


@pytest.fixture(scope="module")
def out(data, tmp_path_factory):
    """The CLI's main() in this process (saves a second start-up of torch, open_clip and clip_benchmark);
    the ``python -m eval.compare`` entry itself is run in a subprocess by the tests below."""
    out = tmp_path_factory.mktemp("eval_out")
    compare.main(cli_args(data, out))
    return out


def run_module(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "eval.compare", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_python_m_eval_compare_from_the_repo_root(data, tmp_path):
    proc = run_module("--help")
    assert proc.returncode == 0 and "--run NAME=CHECKPOINT" in proc.stdout and "--in9-root" in proc.stdout
    bad_in9 = tmp_path / "in9"
    (bad_in9 / "original" / "val").mkdir(parents=True)
    proc = run_module("--model", MODEL, "--run", f"clip={data['clip']}", "--in9-root", str(bad_in9),
                      "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "mixed_rand/val does not exist" in proc.stderr and "'06_musical instrument'" in proc.stderr
    assert not (tmp_path / "out").exists()


def expected_evaluations():
    """(dataset, task) pairs the CLI must have evaluated for each run."""
    pairs = [("imagenet1k", ZEROSHOT_CLASSIFICATION)]
    pairs += [(f"in9/{v}", t) for v in fx.IN9_VARIANTS for t in (ZEROSHOT_CLASSIFICATION, IN1K_TO_IN9)]
    pairs += [("cls", ZEROSHOT_CLASSIFICATION), ("ret", ZEROSHOT_RETRIEVAL)]
    pairs += [(f"bg/{v}", ZEROSHOT_CLASSIFICATION) for v in ("original", "mixed_same", "mixed_rand")]
    if CUDA:  # clip_benchmark's linear probe runs on CUDA only; cls is the one set with a train split
        pairs.append(("cls", LINEAR_PROBE))
    return pairs


def result_json(out, run, dataset, task):
    path = out / "results" / run / f"{dataset.replace('/', '-')}__{task}.json"
    return json.loads(path.read_text())  # clip_benchmark writes a bare NaN, which json accepts


def read_csv(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_evaluation_has_a_clip_benchmark_json(out):
    for run in RUNS:
        for dataset, task in expected_evaluations():
            result = result_json(out, run, dataset, task)
            assert result["task"] == task
            assert ("image_retrieval_recall@1" if task == ZEROSHOT_RETRIEVAL else "acc1") in result["metrics"]
    wrote = {p.name for p in (out / "results" / "clip").iterdir()}
    assert len(wrote) == len(expected_evaluations())
    assert result_json(out, "xsample", "cls", ZEROSHOT_CLASSIFICATION)["dataset"] == "wds/cls"
    assert result_json(out, "clip", "imagenet1k", ZEROSHOT_CLASSIFICATION)["dataset"] == "imagenet1k-unverified"
    nine_way = result_json(out, "clip", "in9/mixed_rand", ZEROSHOT_CLASSIFICATION)
    assert nine_way["classnames"] == ["dog", "bird", "wheeled vehicle", "reptile", "carnivore", "insect",
                                      "musical instrument", "primate", "fish"]


def test_results_csv_has_one_row_per_run_dataset_metric(out, data):
    rows = read_csv(out)
    assert list(rows[0]) == ["run", "model", "checkpoint", "dataset", "task", "metric", "value"]
    keys = [(r["run"], r["dataset"], r["task"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys))
    expected = set()
    for run in RUNS:
        for dataset, task in expected_evaluations():
            for metric, value in result_json(out, run, dataset, task)["metrics"].items():
                if isinstance(value, float):
                    expected.add((run, dataset, task, metric))
        for gap in (("in9", ZEROSHOT_CLASSIFICATION), ("in9", IN1K_TO_IN9), ("bg", ZEROSHOT_CLASSIFICATION),
                    ("cls-vs-bg", ZEROSHOT_CLASSIFICATION)):
            expected.add((run, *gap, "bg_gap"))
    assert set(keys) == expected
    by_key = {(r["run"], r["dataset"], r["task"], r["metric"]): r for r in rows}
    assert by_key[("clip", "cls", ZEROSHOT_CLASSIFICATION, "acc5")]["value"] == "nan"  # 3 classes
    assert by_key[("xsample", "imagenet1k", ZEROSHOT_CLASSIFICATION, "acc1")]["checkpoint"] == data["xsample"]
    for (run, dataset, task, metric), row in by_key.items():
        if metric != "bg_gap":
            assert row["model"] == MODEL
            value = result_json(out, run, dataset, task)["metrics"][metric]
            assert float(row["value"]) == value or math.isnan(value)


def test_bg_gap_is_mixed_same_minus_mixed_rand(out):
    rows = {(r["run"], r["dataset"], r["task"], r["metric"]): float(r["value"]) for r in read_csv(out)}
    cases = [("in9", "in9/mixed_same", "in9/mixed_rand", ZEROSHOT_CLASSIFICATION),
             ("in9", "in9/mixed_same", "in9/mixed_rand", IN1K_TO_IN9),
             ("bg", "bg/mixed_same", "bg/mixed_rand", ZEROSHOT_CLASSIFICATION),
             ("cls-vs-bg", "cls", "bg/original", ZEROSHOT_CLASSIFICATION)]
    for run in RUNS:
        for label, same, rand, task in cases:
            acc_same = result_json(out, run, same, task)["metrics"]["acc1"]
            acc_rand = result_json(out, run, rand, task)["metrics"]["acc1"]
            assert rows[(run, label, task, "bg_gap")] == pytest.approx(acc_same - acc_rand, abs=1e-12)


def test_mapped_in9_score_uses_the_imagenet_classifier(out):
    for run in RUNS:
        assert (out / "classifiers" / f"{run}__imagenet1k.pt").stat().st_size > 0
        for variant in fx.IN9_VARIANTS:
            acc = result_json(out, run, f"in9/{variant}", IN1K_TO_IN9)["metrics"]["acc1"]
            assert 0 <= acc <= 1 and (acc * 18) == pytest.approx(round(acc * 18))  # 2 images x 9 classes


def test_report_table(out):
    text = (out / "report.md").read_text()
    assert "| dataset | task | metric | clip | xsample | Δ xsample − clip |" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # headline rows: IN-1k, 8 x 2 IN-9, cls, 6 retrieval recalls, 3 bg, 4 BG-Gaps (+ the linear probe on CUDA)
    assert len(table) == 1 + 16 + 1 + 6 + 3 + 4 + (1 if CUDA else 0)
    in1k = [result_json(out, r, "imagenet1k", ZEROSHOT_CLASSIFICATION)["metrics"]["acc1"] for r in RUNS]
    cells = f"{100 * in1k[0]:.2f} | {100 * in1k[1]:.2f} | {100 * (in1k[1] - in1k[0]):+.2f}"
    assert f"| imagenet1k | zero-shot | top-1 | {cells} |" in table
    assert any(line.startswith("| in9 | zero-shot | BG-Gap") for line in table)
    assert "in9: linear probe skipped, IN-9 has no train split" in text
    assert "imagenet1k: linear probe skipped, no train split" in text
    assert ("needs CUDA" in text) != CUDA


def test_comparison_png(out):
    png = out / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert width >= 800 and height >= 800


def test_rerun_skips_finished_evaluations(out, data, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("re-evaluated an evaluation that already had a result")

    monkeypatch.setattr(runner, "run_clip_benchmark", fail)
    monkeypatch.setattr(runner.mapped, "evaluate_mapped", fail)
    before = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")}
    csv_before = (out / "results.csv").read_text()
    comparison = compare.main(cli_args(data, out))
    assert {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")} == before
    assert (out / "results.csv").read_text() == csv_before
    assert comparison.value("xsample", "in9", IN1K_TO_IN9, "bg_gap") == pytest.approx(
        result_json(out, "xsample", "in9/mixed_same", IN1K_TO_IN9)["metrics"]["acc1"]
        - result_json(out, "xsample", "in9/mixed_rand", IN1K_TO_IN9)["metrics"]["acc1"])


def test_same_run_name_with_another_checkpoint_is_refused(out, data):
    with pytest.raises(compare.SetupError, match="already holds results of run 'clip'"):
        compare.compare(MODEL, {"clip": data["xsample"]}, compare.wds_specs("cls", data["cls"]), out=str(out))


def test_local_dir_model_evaluates_each_runs_checkpoint(out, data, tmp_path):
    """A local-dir: model ignores `pretrained` in open_clip, so each run must get its own weights."""
    model_dir = fx.local_dir_model(tmp_path / "tiny", decoy_weights=data["xsample"])
    comparison = compare.compare(f"local-dir:{model_dir}", {"clip": data["clip"]},
                                 compare.wds_specs("ret", data["ret"]), out=str(tmp_path / "out"),
                                 num_workers=0)
    weights = tmp_path / "out" / "models" / "clip" / "open_clip_pytorch_model.bin"
    assert os.path.realpath(weights) == os.path.realpath(data["clip"])
    expected = result_json(out, "clip", "ret", ZEROSHOT_RETRIEVAL)["metrics"]  # same weights as a registered name
    for metric, value in expected.items():
        assert comparison.value("clip", "ret", ZEROSHOT_RETRIEVAL, metric) == pytest.approx(value)
