"""``eval.compare`` end to end on CPU: fixture folders in the real layouts, two tiny checkpoints.

One CLI run (module fixture) evaluates ImageNet-1k, the 8 IN-9 variants (9-way and mapped 1000-way) and
three custom wds sets; the tests then check its JSONs, results.csv, report.md and comparison.png, and
recompute every zero-shot score independently (open_clip's model, tokenizer and the CLIP recipe, no
clip_benchmark). Smaller comparisons in tmp folders check which results are reused when checkpoints change.
"""
import csv
import io
import json
import logging
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import eval_fixtures as fx
from xsample_openclip.eval import compare, in9, runner
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
        "bg": fx.wds_bg_group(root / "bg", train=True),  # the group's train split: a probe for every variant
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
    pairs += [(f"bg/{v}", t) for v in ("original", "mixed_same", "mixed_rand")
              for t in (ZEROSHOT_CLASSIFICATION, LINEAR_PROBE)]  # the probe trains on the group's train split
    pairs.append(("cls", LINEAR_PROBE))  # on any device (eval.linear_probe)
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
            top1 = {ZEROSHOT_RETRIEVAL: "image_retrieval_recall@1", LINEAR_PROBE: "lp_acc1"}.get(task, "acc1")
            assert top1 in result["metrics"]
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
                if isinstance(value, float) and metric != "weight_decay":  # the probe's setting, not a score
                    expected.add((run, dataset, task, metric))
        for gap in (("in9", ZEROSHOT_CLASSIFICATION), ("in9", IN1K_TO_IN9), ("bg", ZEROSHOT_CLASSIFICATION),
                    ("cls-vs-bg", ZEROSHOT_CLASSIFICATION), ("bg", LINEAR_PROBE), ("cls-vs-bg", LINEAR_PROBE)):
            expected.add((run, *gap, "bg_gap"))
    assert set(keys) == expected
    by_key = {(r["run"], r["dataset"], r["task"], r["metric"]): r for r in rows}
    assert by_key[("clip", "cls", ZEROSHOT_CLASSIFICATION, "acc5")]["value"] == "nan"  # 3 classes
    assert by_key[("xsample", "imagenet1k", ZEROSHOT_CLASSIFICATION, "acc1")]["checkpoint"] == data["xsample"]
    for (run, dataset, task, metric), row in by_key.items():
        if metric != "bg_gap":
            assert row["model"] == MODEL
            value = result_json(out, run, dataset, task)["metrics"][metric]
            assert row["value"] == "nan" if math.isnan(value) else float(row["value"]) == value


def test_bg_gap_is_mixed_same_minus_mixed_rand(out):
    rows = {(r["run"], r["dataset"], r["task"], r["metric"]): float(r["value"]) for r in read_csv(out)}
    cases = [("in9", "in9/mixed_same", "in9/mixed_rand", ZEROSHOT_CLASSIFICATION),
             ("in9", "in9/mixed_same", "in9/mixed_rand", IN1K_TO_IN9),
             ("bg", "bg/mixed_same", "bg/mixed_rand", ZEROSHOT_CLASSIFICATION),
             ("cls-vs-bg", "cls", "bg/original", ZEROSHOT_CLASSIFICATION),
             ("bg", "bg/mixed_same", "bg/mixed_rand", LINEAR_PROBE),  # BG-Gap by probe, next to zero-shot's
             ("cls-vs-bg", "cls", "bg/original", LINEAR_PROBE)]
    for run in RUNS:
        for label, same, rand, task in cases:
            metric = "lp_acc1" if task == LINEAR_PROBE else "acc1"
            acc_same = result_json(out, run, same, task)["metrics"][metric]
            acc_rand = result_json(out, run, rand, task)["metrics"][metric]
            assert rows[(run, label, task, "bg_gap")] == pytest.approx(acc_same - acc_rand, abs=1e-12)


# ---- the tool's numbers against an independent computation --------------------------------------------
# The model, classifier, features and hits are computed here with open_clip's tokenizer, encode_text and
# encode_image and the textbook CLIP recipe (a class = the normalised mean of its prompts' normalised text
# embeddings), not with clip_benchmark or eval/. Scores are cosines; the tool's fp32 CPU run batches
# differently, which moves a cosine by ~1e-7, so an image whose outcome a change of SCORE_TOL could flip
# counts as undecided and the tool's score must lie between the two outcomes. On CUDA the tool runs with
# mixed precision (fp16 text and image towers), so the tolerances are those of fp16.
SCORE_TOL = 5e-3 if CUDA else 1e-5
CLASSIFIER_ATOL = 1e-2 if CUDA else 1e-5
MAX_UNDECIDED = 0.25 if CUDA else 0.02  # the fixture must leave most outcomes decided, or a check says little


def load_model(checkpoint):
    """A run's model and eval transform: open_clip's architecture, the checkpoint's state_dict (DDP's
    ``module.`` prefix stripped)."""
    import open_clip

    from xsample_openclip.model_configs import register

    register()
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    state = torch.load(checkpoint, map_location="cpu")["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval(), preprocess


def text_classifier(model, classnames, templates):
    """(D, classes): per class, the normalised mean of its prompts' normalised text embeddings."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(MODEL)
    with torch.no_grad():
        columns = [F.normalize(model.encode_text(tokenizer([t.format(c=c) for t in templates])), dim=-1).mean(0)
                   for c in classnames]
    return F.normalize(torch.stack(columns, dim=1), dim=0)


def image_embeddings(model, preprocess, images):
    """(images, D) normalised image embeddings of PIL images."""
    with torch.no_grad():
        return F.normalize(model.encode_image(torch.stack([preprocess(im.convert("RGB")) for im in images])), dim=-1)


def image_folder(split_dir):
    """The PIL images and labels of an ImageFolder (class = index of the sorted sub-folder)."""
    from PIL import Image

    images, labels = [], []
    for label, folder in enumerate(sorted(p.name for p in Path(split_dir).iterdir())):
        for path in sorted((Path(split_dir) / folder).iterdir()):
            images.append(Image.open(path))
            labels.append(label)
    return images, torch.tensor(labels)


def wds_samples(folder):
    """{key: {extension: bytes}} of a wds set's test shard, read with tarfile."""
    samples = {}
    with tarfile.open(Path(folder) / "test" / "0.tar") as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def wds_classification(folder):
    """The images, labels, class names and templates of a wds classification set."""
    from PIL import Image

    samples = wds_samples(folder).values()
    images = [Image.open(io.BytesIO(s["png"])) for s in samples]
    labels = torch.tensor([int(s["cls"]) for s in samples])
    classnames = (Path(folder) / "classnames.txt").read_text().splitlines()
    templates = (Path(folder) / "zeroshot_classification_templates.txt").read_text().splitlines()
    return images, labels, classnames, templates


def hit_bounds(scores, positives, k):
    """Rows whose best-scoring positive column ranks in the top ``k``: (sure hits, undecided rows), where a
    row is undecided if moving scores by SCORE_TOL could change its outcome."""
    best = scores.masked_fill(~positives, -math.inf).max(dim=1).values[:, None]
    others = scores.masked_fill(positives, -math.inf)  # only non-positives can rank above the best positive
    hit = (others > best - SCORE_TOL).sum(dim=1) < k
    miss = (others > best + SCORE_TOL).sum(dim=1) >= k
    return int(hit.sum()), int((~hit & ~miss).sum())


def assert_score(value, scores, positives, k=1):
    """The tool's ``value`` (a fraction of rows) is the hit rate computed here, up to undecided rows."""
    hits, undecided = hit_bounds(scores, positives, k)
    rows = len(scores)
    assert undecided <= MAX_UNDECIDED * rows, f"{undecided} of {rows} outcomes within {SCORE_TOL}: check is vacuous"
    assert hits / rows - 1e-6 <= value <= (hits + undecided) / rows + 1e-6, (value, hits, undecided, rows)  # fp32


def one_hot(labels, classes):
    return F.one_hot(labels, classes).bool()


@pytest.fixture(scope="module")
def imagenet_classifiers(out, data):
    """Per run, the tool's saved 1000-class ImageNet classifier, checked against one built here with the
    OpenAI class names and 80 templates (open_clip's copy of them): fully for xsample, every 40th class
    for clip (80,000 prompts cost ~15 s per run on one core; both runs share the tool's code path)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    templates = [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    classifiers = {}
    for run, step in (("clip", 40), ("xsample", 1)):
        model, _ = load_model(data[run])
        saved = torch.load(out / "classifiers" / f"{run}__imagenet1k.pt", map_location="cpu").float()
        assert saved.shape == (64, 1000)
        mine = text_classifier(model, IMAGENET_CLASSNAMES[::step], templates)
        torch.testing.assert_close(saved[:, ::step], mine, atol=CLASSIFIER_ATOL, rtol=0)
        classifiers[run] = saved
    return classifiers


def test_imagenet_zero_shot_matches_an_independent_classifier(out, data, imagenet_classifiers):
    images, labels = image_folder(Path(data["imagenet"]) / "val")
    assert len(images) == 1000
    for run in RUNS:
        model, preprocess = load_model(data[run])
        scores = image_embeddings(model, preprocess, images) @ imagenet_classifiers[run]
        metrics = result_json(out, run, "imagenet1k", ZEROSHOT_CLASSIFICATION)["metrics"]
        assert_score(metrics["acc1"], scores, one_hot(labels, 1000))
        assert_score(metrics["acc5"], scores, one_hot(labels, 1000), k=5)
        assert metrics["mean_per_class_recall"] == pytest.approx(metrics["acc1"])  # one image per class


def test_mapped_in9_score_uses_the_imagenet_classifier(out, data, imagenet_classifiers):
    """1000-way top-1 mapped to IN-9 (by the published ranges, checked in test_eval_units) must equal the
    classifier's predictions on each variant's images; an unmapped prediction is a miss."""
    from xsample_openclip.eval.in9 import in1k_to_in9

    table = torch.tensor(in1k_to_in9())
    for run in RUNS:
        model, preprocess = load_model(data[run])
        for variant in fx.IN9_VARIANTS:
            images, labels = image_folder(Path(data["in9"]) / variant / "val")
            scores = image_embeddings(model, preprocess, images) @ imagenet_classifiers[run]
            acc = result_json(out, run, f"in9/{variant}", IN1K_TO_IN9)["metrics"]["acc1"]
            assert_score(acc, scores, table[None, :] == labels[:, None])


def test_nine_way_and_wds_zero_shot_match_independent_classifiers(out, data):
    """IN-9's 9-way zero-shot (its class names, clip_benchmark's 80 ImageNet templates) and the wds sets'
    (the class names and templates written with them)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    in9_templates = [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    sets = [(f"in9/{v}", *image_folder(Path(data["in9"]) / v / "val"), in9.CLASSNAMES, in9_templates)
            for v in fx.IN9_VARIANTS]
    sets += [(name, *wds_classification(folder)) for name, folder in
             [("cls", data["cls"])] + [(f"bg/{v}", Path(data["bg"]) / v) for v in ("original", "mixed_same",
                                                                               "mixed_rand")]]
    assert sets[-1][4] == list(fx.TEMPLATES) and sets[-1][3] == ["circle", "square", "triangle", "star", "heart",
                                                                 "moon"]
    for run in RUNS:
        model, preprocess = load_model(data[run])
        classifiers = {}  # the 8 IN-9 variants share one
        for name, images, labels, classnames, templates in sets:
            key = (tuple(classnames), tuple(templates))
            if key not in classifiers:
                classifiers[key] = text_classifier(model, classnames, templates)
            scores = image_embeddings(model, preprocess, images) @ classifiers[key]
            acc = result_json(out, run, name, ZEROSHOT_CLASSIFICATION)["metrics"]["acc1"]
            assert_score(acc, scores, one_hot(labels, len(classnames)))


def test_retrieval_recalls_match_an_independent_ranking(out, data):
    """clip_benchmark's image_retrieval_recall@k: a caption's image in its top k images; text_retrieval:
    any of an image's captions in its top k captions."""
    import open_clip
    from PIL import Image

    samples = list(wds_samples(data["ret"]).values())
    images = [Image.open(io.BytesIO(s["png"])) for s in samples]
    captions = [(i, c) for i, s in enumerate(samples) for c in s["txt"].decode().splitlines()]
    assert len(images) == 12 and len(captions) == 24
    owner = torch.tensor([i for i, _ in captions])
    positives = owner[:, None] == torch.arange(len(images))[None, :]  # (captions, images)
    for run in RUNS:
        model, preprocess = load_model(data[run])
        with torch.no_grad():
            texts = F.normalize(model.encode_text(open_clip.get_tokenizer(MODEL)([c for _, c in captions])), dim=-1)
        scores = texts @ image_embeddings(model, preprocess, images).T
        metrics = result_json(out, run, "ret", ZEROSHOT_RETRIEVAL)["metrics"]
        for k in (1, 5, 10):
            assert_score(metrics[f"image_retrieval_recall@{k}"], scores, positives, k)
            assert_score(metrics[f"text_retrieval_recall@{k}"], scores.T, positives.T, k)


def test_report_table(out):
    text = (out / "report.md").read_text()
    assert "| dataset | task | metric | clip | xsample | Δ xsample − clip |" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # headline rows: IN-1k, 8 x 2 IN-9, cls, 6 retrieval recalls, 3 bg, 4 BG-Gaps, linear probe: cls, 3 bg,
    # 2 BG-Gaps (bg, cls-vs-bg)
    assert len(table) == 1 + 16 + 1 + 6 + 3 + 4 + 1 + 3 + 2
    in1k = [result_json(out, r, "imagenet1k", ZEROSHOT_CLASSIFICATION)["metrics"]["acc1"] for r in RUNS]
    cells = f"{100 * in1k[0]:.2f} | {100 * in1k[1]:.2f} | {100 * (in1k[1] - in1k[0]):+.2f}"
    assert f"| imagenet1k | zero-shot | top-1 | {cells} |" in table
    assert any(line.startswith("| in9 | zero-shot | BG-Gap") for line in table)
    assert "in9: linear probe skipped, IN-9 has no train split" in text
    assert "imagenet1k: linear probe skipped, no train split" in text
    assert "| bg | linear probe | BG-Gap (lower is better) |" in text
    assert "needs CUDA" not in text and "bg: linear probe skipped" not in text


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
    monkeypatch.setattr(runner, "ProbeRun", fail)
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


def retrieval_metrics(result):
    return {m: v for m, v in result["metrics"].items() if "_retrieval_recall@" in m}


def test_overwritten_checkpoint_is_reevaluated_and_an_untouched_one_reused(out, data, tmp_path, monkeypatch,
                                                                            caplog):
    """epoch_latest.pt overwritten at the same path (same size: same architecture) gets new numbers, those
    of its new weights; the other run's result is reused."""
    latest, other = tmp_path / "epoch_latest.pt", tmp_path / "other.pt"
    fx.checkpoint(latest, seed=0)  # the clip run's weights
    other.write_bytes(Path(data["xsample"]).read_bytes())
    specs, work = compare.wds_specs("ret", data["ret"]), tmp_path / "out"
    old, new = (retrieval_metrics(result_json(out, run, "ret", ZEROSHOT_RETRIEVAL)) for run in RUNS)
    assert old != new  # the two weights score differently, so reuse would show
    first = compare.compare(MODEL, {"latest": str(latest), "other": str(other)}, specs, out=str(work), num_workers=0)
    assert retrieval_metrics(result_json(work, "latest", "ret", ZEROSHOT_RETRIEVAL)) == old
    other_json = work / "results" / "other" / "ret__zeroshot_retrieval.json"
    other_mtime, size = other_json.stat().st_mtime_ns, latest.stat().st_size

    fx.checkpoint(latest, seed=1)  # the xsample run's weights, saved without the DDP prefix
    assert latest.stat().st_size == size
    evaluated = []
    real = runner.run_clip_benchmark
    monkeypatch.setattr(runner, "run_clip_benchmark", lambda argv: evaluated.append(argv) or real(argv))
    with caplog.at_level(logging.WARNING):
        second = compare.compare(MODEL, {"latest": str(latest), "other": str(other)}, specs, out=str(work),
                                 num_workers=0)
    assert [argv[argv.index("--pretrained") + 1] for argv in evaluated] == [str(latest)]
    assert retrieval_metrics(result_json(work, "latest", "ret", ZEROSHOT_RETRIEVAL)) == new
    for metric in old:  # what the comparison reports too
        assert (first.value("latest", "ret", ZEROSHOT_RETRIEVAL, metric), second.value(
            "latest", "ret", ZEROSHOT_RETRIEVAL, metric)) == (pytest.approx(old[metric]), pytest.approx(new[metric]))
    message = f"latest: checkpoint {latest} changed since its results were computed"
    assert message in caplog.text and "its evaluations were recomputed" in caplog.text
    assert message in (work / "report.md").read_text()
    assert other_json.stat().st_mtime_ns == other_mtime and "other:" not in caplog.text


def test_checkpoint_changing_during_evaluation_is_noted_and_a_touch_keeps_results(data, tmp_path, monkeypatch):
    """A checkpoint rewritten while evaluated (training still saving epoch_latest.pt) gets a note; the
    next run hashes it again and, the content being the same here (a touch), reuses the results."""
    latest = tmp_path / "epoch_latest.pt"
    latest.write_bytes(Path(data["clip"]).read_bytes())
    specs, work = compare.wds_specs("ret", data["ret"]), tmp_path / "out"
    real = runner.run_clip_benchmark

    def evaluate_then_touch(argv):
        real(argv)
        stat = latest.stat()
        os.utime(latest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    monkeypatch.setattr(runner, "run_clip_benchmark", evaluate_then_touch)
    comparison = compare.compare(MODEL, {"latest": str(latest)}, specs, out=str(work), num_workers=0)
    assert comparison.notes == [f"latest: checkpoint {latest} changed while it was being evaluated, so its results "
                                "may mix two versions; run again with the same --out to recompute them"]
    monkeypatch.setattr(runner, "run_clip_benchmark", lambda argv: pytest.fail("re-evaluated an unchanged content"))
    assert compare.compare(MODEL, {"latest": str(latest)}, specs, out=str(work), num_workers=0).notes == []
    recorded = json.loads((work / "runs.json").read_text())["latest"]["identity"]
    assert recorded["mtime_ns"] == latest.stat().st_mtime_ns  # the new stat is recorded with the same hash


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
