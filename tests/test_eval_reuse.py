"""When ``eval.compare`` reuses a finished result: only for the same set content and the same task settings.

A result file is named by run, set name and task; a set rebuilt under the same name (other images or
labels) or a changed task setting (the probe's validation share) must get new numbers, those of a fresh
evaluation in another folder (the independent computation here), and a result that records no inputs (an
earlier version's) is recomputed too. An unchanged set and settings still reuse everything.
"""
import json
import logging
import shutil

import pytest

import eval_fixtures as fx
from xsample_openclip.eval import compare, runner
from xsample_openclip.eval.linear_probe import ProbeSettings
from xsample_openclip.eval.specs import LINEAR_PROBE, ZEROSHOT_CLASSIFICATION

MODEL = "xs-tiny-vit-32"
TASKS = (ZEROSHOT_CLASSIFICATION, LINEAR_PROBE)
CLASSES = ["cat", "dog", "car", "bus", "cup"]

pytestmark = [pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.pin_memory. argument is set as true:UserWarning")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fx.checkpoint(tmp_path_factory.mktemp("ckpt") / "a.pt", seed=0)


def evaluate(checkpoint, folder, out, val_proportion=0.2):
    return compare.compare(MODEL, {"a": checkpoint}, compare.wds_specs("set", str(folder)),
                           tasks="zeroshot,linear_probe", out=str(out), num_workers=0, batch_size=16,
                           probe=ProbeSettings(val_proportion=val_proportion))


def outcome(out, task):
    """What a result says, as JSON text (a NaN top-5 as NaN): its scores and, for the probe, its protocol."""
    result = json.loads((out / "results" / "a" / f"set__{task}.json").read_text())
    return json.dumps({"metrics": result["metrics"], "protocol": result.get("protocol")}, sort_keys=True)


def counting(monkeypatch):
    """Count the zero-shot clip_benchmark calls and the probe evaluations."""
    calls = {ZEROSHOT_CLASSIFICATION: 0, LINEAR_PROBE: 0}
    real_cb, real_probe = runner.run_clip_benchmark, runner.ProbeRun.evaluate

    def cb(argv):
        calls[ZEROSHOT_CLASSIFICATION] += 1
        return real_cb(argv)

    def probe(self, spec, output):
        calls[LINEAR_PROBE] += 1
        return real_probe(self, spec, output)

    monkeypatch.setattr(runner, "run_clip_benchmark", cb)
    monkeypatch.setattr(runner.ProbeRun, "evaluate", probe)
    return calls


def test_a_set_rebuilt_under_the_same_name_is_evaluated_again(checkpoint, tmp_path, monkeypatch, caplog):
    folder, work = tmp_path / "set", tmp_path / "out"
    fx.wds_classification(folder, CLASSES, per_class=3, seed=100, train=True)
    evaluate(checkpoint, folder, work)
    old = {t: outcome(work, t) for t in TASKS}

    calls = counting(monkeypatch)
    evaluate(checkpoint, folder, work)  # unchanged: everything reused
    assert calls == {ZEROSHOT_CLASSIFICATION: 0, LINEAR_PROBE: 0}

    shutil.rmtree(folder)  # the same name now holds other images with other labels (3 classes: another chance level)
    fx.wds_classification(folder, ["bird", "fish", "tree"], per_class=4, seed=500, train=True)
    with caplog.at_level(logging.INFO):
        evaluate(checkpoint, folder, work)
    assert calls == {ZEROSHOT_CLASSIFICATION: 1, LINEAR_PROBE: 1}
    assert "the content of set 'set' changed" in caplog.text and "recomput" in caplog.text
    evaluate(checkpoint, folder, tmp_path / "fresh")
    for task in TASKS:
        assert outcome(work, task) == outcome(tmp_path / "fresh", task)
        assert outcome(work, task) != old[task]  # so a reused result would have shown


def test_a_result_without_recorded_inputs_is_recomputed(checkpoint, tmp_path, monkeypatch, caplog):
    """A result written before results recorded what they were computed from, here with a wrong score."""
    folder, work = tmp_path / "set", tmp_path / "out"
    fx.wds_classification(folder, CLASSES, per_class=3, seed=100, train=True)
    evaluate(checkpoint, folder, work)
    right = outcome(work, ZEROSHOT_CLASSIFICATION)
    path = work / "results" / "a" / f"set__{ZEROSHOT_CLASSIFICATION}.json"
    result = json.loads(path.read_text())
    result.pop("inputs", None)
    result["metrics"]["acc1"] = -1.0
    path.write_text(json.dumps(result))
    calls = counting(monkeypatch)
    with caplog.at_level(logging.INFO):
        evaluate(checkpoint, folder, work)
    assert calls == {ZEROSHOT_CLASSIFICATION: 1, LINEAR_PROBE: 0}
    assert outcome(work, ZEROSHOT_CLASSIFICATION) == right
    assert "records no inputs" in caplog.text


def test_a_changed_probe_setting_is_evaluated_again(checkpoint, tmp_path, monkeypatch, caplog):
    folder, work = tmp_path / "set", tmp_path / "out"
    fx.wds_classification(folder, CLASSES, per_class=4, seed=100, train=True)
    evaluate(checkpoint, folder, work, val_proportion=0.2)
    old = outcome(work, LINEAR_PROBE)
    calls = counting(monkeypatch)
    with caplog.at_level(logging.INFO):
        evaluate(checkpoint, folder, work, val_proportion=0.5)
    assert calls == {ZEROSHOT_CLASSIFICATION: 0, LINEAR_PROBE: 1}  # the zero-shot result does not depend on it
    assert "val_proportion" in caplog.text
    evaluate(checkpoint, folder, tmp_path / "fresh", val_proportion=0.5)
    assert outcome(work, LINEAR_PROBE) == outcome(tmp_path / "fresh", LINEAR_PROBE) != old
