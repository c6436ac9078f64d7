"""Fast checks of eval/: the ImageNet-to-IN-9 mapping, argument parsing, layout errors, report arithmetic,
the checkpoint identities that decide which results are reused."""
import hashlib
import json
import math
import os

import pytest

from xsample_openclip.eval import checkpoints, compare, in9, layouts, report, results, runner
from xsample_openclip.eval.specs import (IN1K_TO_IN9, LINEAR_PROBE, ZEROSHOT_CLASSIFICATION, ZEROSHOT_RETRIEVAL,
                                        BgGap, DatasetSpec, Run, SetupError, parse_bg_gap, parse_run, parse_tasks)

# The published mapping (MadryLab/backgrounds_challenge in_to_in9.json), written out as ImageNet index
# ranges per IN-9 class, independently of eval/in9.py's encoding.
PUBLISHED = {
    "dog": "151-170 173-268",
    "bird": "7-24 87-100 127-146",
    "wheeled vehicle": "407-408 428 436 444 468 511 547 555 561 565 569 573 586 603 609 612 627 656 661 665 "
                       "670-671 675 690 705 717 734 751 757 791 802-803 817 820 829 847 864 866-867 870 880",
    "reptile": "33-68",
    "carnivore": "269-280 286-299 356-362 387-388",
    "insect": "300-326",
    "musical instrument": "401-402 420 432 486 494 513 541 546 558 566 577 579 593-594 641-642 683-684 687 "
                          "699 776 822 875 881 889",
    "primate": "365-384",
    "fish": "0-6 389-397",
}
# Number of ImageNet classes under each IN-9 class (Xiao et al. 2020, appendix table; in9_classes.txt).
PAPER_COUNTS = {"dog": 116, "bird": 52, "wheeled vehicle": 42, "reptile": 36, "carnivore": 35, "insect": 27,
                "musical instrument": 26, "primate": 20, "fish": 16}


def _expand(ranges):
    out = []
    for part in ranges.split():
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def test_in1k_to_in9_matches_published_ranges():
    table = in9.in1k_to_in9()
    assert len(table) == 1000
    expected = [in9.UNMAPPED] * 1000
    for label, name in enumerate(in9.CLASSNAMES):
        for index in _expand(PUBLISHED[name]):
            expected[index] = label
    assert table == expected
    counts = {name: table.count(label) for label, name in enumerate(in9.CLASSNAMES)}
    assert counts == PAPER_COUNTS
    assert table.count(in9.UNMAPPED) == 1000 - sum(PAPER_COUNTS.values()) == 630


def test_in1k_to_in9_by_class_name():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    table = dict(zip(IMAGENET_CLASSNAMES, in9.in1k_to_in9()))
    label = {name: i for i, name in enumerate(in9.CLASSNAMES)}
    assert table["tench"] == table["pufferfish"] == label["fish"]
    assert table["Chihuahua"] == table["Mexican hairless dog (xoloitzcuintli)"] == label["dog"]
    assert table["Italian Greyhound"] == table["Whippet"] == in9.UNMAPPED  # as published
    assert table["rooster"] == table["albatross"] == label["bird"]
    assert table["ambulance"] == table["unicycle"] == label["wheeled vehicle"]
    assert table["loggerhead sea turtle"] == table["sidewinder rattlesnake"] == label["reptile"]
    assert table["grey wolf"] == table["red panda"] == label["carnivore"]
    assert table["tabby cat"] == in9.UNMAPPED
    assert table["ladybug"] == label["insect"]
    assert table["accordion"] == table["violin"] == label["musical instrument"]
    assert table["orangutan"] == table["indri"] == label["primate"]


def test_in9_layout_constants():
    assert in9.CLASSNAMES == ("dog", "bird", "wheeled vehicle", "reptile", "carnivore", "insect",
                              "musical instrument", "primate", "fish")
    assert list(in9.CLASS_FOLDERS) == sorted(in9.CLASS_FOLDERS)  # folder order is label order
    assert len(in9.VARIANTS) == 8 and {"mixed_same", "mixed_rand"} <= set(in9.VARIANTS)


def test_imagenet_wnids_are_in_label_order():
    """ImageFolder labels folders in sorted order; that must be the standard ImageNet index order."""
    from timm.data import ImageNetInfo

    wnids = layouts.imagenet_wnids()
    assert wnids == list(ImageNetInfo("imagenet-1k").label_names()) == sorted(set(wnids))
    assert len(wnids) == 1000 and wnids[0] == "n01440764" and wnids[-1] == "n15075141"


def test_mapped_accuracy_counts_unmapped_predictions_as_wrong():
    import torch

    from xsample_openclip.eval.mapped import mapped_accuracy

    logits = torch.zeros(4, 1000)
    logits[0, 151] = 1  # dog, target dog: right
    logits[1, 0] = 1  # fish, target fish: right
    logits[2, 281] = 1  # tabby cat: no IN-9 class, target carnivore: wrong
    logits[3, 407] = 1  # ambulance = vehicle, target insect: wrong
    assert mapped_accuracy(logits, torch.tensor([0, 8, 4, 5])) == 0.5


def test_parse_run():
    assert parse_run("xsample=logs/x/epoch_3.pt") == Run("xsample", "logs/x/epoch_3.pt")
    for bad in ("xsample", "=a.pt", "x=", "x y=a.pt", "../x=a.pt"):
        with pytest.raises(SetupError):
            parse_run(bad)


def test_parse_bg_gap_and_tasks():
    assert parse_bg_gap("shapes=bg/mixed_same,bg/mixed_rand") == BgGap("shapes", "bg/mixed_same", "bg/mixed_rand")
    assert parse_bg_gap("a,b").same == "a"
    with pytest.raises(SetupError):
        parse_bg_gap("a")
    assert parse_tasks("zeroshot") == (ZEROSHOT_CLASSIFICATION, ZEROSHOT_RETRIEVAL, IN1K_TO_IN9)
    assert parse_tasks("linear_probe,zeroshot")[-1] == LINEAR_PROBE
    with pytest.raises(SetupError):
        parse_tasks("zeroshot,fewshot")


def test_cli_rejects_bad_run_syntax(capsys):
    with pytest.raises(SystemExit) as exc:
        compare.main(["--model", "xs-tiny-vit-32", "--run", "clip", "--out", "x"])
    assert exc.value.code == 2
    assert "NAME=CHECKPOINT" in capsys.readouterr().err


def _no_evaluation(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an evaluation started despite a setup error")

    monkeypatch.setattr(runner, "run_clip_benchmark", fail)
    monkeypatch.setattr(runner.mapped, "evaluate_mapped", fail)
    monkeypatch.setattr(runner, "ProbeRun", fail)


def _fake_imagenet(root, wnids):
    for wnid in wnids:
        os.makedirs(os.path.join(root, "val", wnid))
        open(os.path.join(root, "val", wnid, f"{wnid}_1.JPEG"), "wb").close()


def test_incomplete_imagenet_stops_before_evaluating(tmp_path, monkeypatch, capsys):
    _no_evaluation(monkeypatch)
    wnids = layouts.imagenet_wnids()
    _fake_imagenet(tmp_path / "imagenet", wnids[:-1] + ["n99999999"])
    checkpoint = tmp_path / "a.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        compare.main(["--model", "xs-tiny-vit-32", "--run", f"a={checkpoint}", "--out", str(tmp_path / "out"),
                      "--imagenet-root", str(tmp_path / "imagenet")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nothing is downloaded" in err and "val/<wnid>/" in err and "--imagenet-val" in err
    assert "1 missing class folders ('n15075141')" in err and "1 unexpected folders ('n99999999')" in err
    assert not (tmp_path / "out").exists()


def test_imagenet_root_pointing_at_val_gets_a_hint(tmp_path):
    _fake_imagenet(tmp_path, layouts.imagenet_wnids()[:3])
    with pytest.raises(SetupError, match="pass the folder above 'val/'"):
        layouts.imagenet_specs(str(tmp_path / "val"))


def test_missing_roots_and_files(tmp_path):
    with pytest.raises(SetupError, match="does not exist"):
        layouts.imagenet_specs(str(tmp_path / "nowhere"))
    for variant in in9.VARIANTS[:-1]:
        for folder in in9.CLASS_FOLDERS:
            os.makedirs(tmp_path / "in9" / variant / "val" / folder)
            (tmp_path / "in9" / variant / "val" / folder / "x.png").write_bytes(b"")
    with pytest.raises(SetupError) as exc:
        layouts.in9_specs(str(tmp_path / "in9"))
    message = str(exc.value)
    assert "only_bg_t/val does not exist" in message and "'02_wheeled vehicle'" in message
    (tmp_path / "wds" / "test").mkdir(parents=True)
    with pytest.raises(SetupError, match="nshards.txt does not exist"):
        layouts.wds_specs("shapes", str(tmp_path / "wds"))


def test_missing_checkpoint_and_unknown_model(tmp_path, monkeypatch):
    _no_evaluation(monkeypatch)
    spec = DatasetSpec("x", "wds/x", str(tmp_path), (ZEROSHOT_CLASSIFICATION,))
    with pytest.raises(SetupError, match="checkpoint file not found"):
        compare.compare("xs-tiny-vit-32", {"a": str(tmp_path / "missing.pt")}, [spec], out=str(tmp_path / "o"))
    with pytest.raises(SetupError, match="not a registered OpenCLIP model"):
        compare.compare("no-such-model", {"a": __file__}, [spec], out=str(tmp_path / "o"))
    with pytest.raises(SetupError, match="no dataset named"):
        compare.compare("xs-tiny-vit-32", {"a": __file__}, [spec], bg_gaps=[BgGap("g", "x", "y")],
                        out=str(tmp_path / "o"))
    with pytest.raises(SetupError, match="nothing to evaluate"):
        compare.compare("xs-tiny-vit-32", {"a": __file__}, [spec], tasks="linear_probe", out=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_bg_gap_rows_and_report_render():
    rows = [dict(run=r, dataset=d, task=ZEROSHOT_CLASSIFICATION, metric=m, value=v) for r, d, m, v in [
        ("clip", "bg/mixed_same", "acc1", 0.75), ("clip", "bg/mixed_rand", "acc1", 0.5),
        ("xs", "bg/mixed_same", "acc1", 0.7), ("xs", "bg/mixed_rand", "acc1", 0.6),
        ("clip", "bg/mixed_same", "acc5", float("nan")), ("xs", "bg/mixed_same", "acc5", float("nan"))]]
    specs = [DatasetSpec(f"bg/{v}", "wds/x", "/", (), group="bg", variant=v) for v in ("mixed_same", "mixed_rand")]
    gaps = results.bg_gap_rows(rows, results.auto_bg_gaps(specs))
    assert {(g["run"], g["dataset"], g["metric"]) for g in gaps} == {("clip", "bg", "bg_gap"), ("xs", "bg", "bg_gap")}
    assert math.isclose(next(g["value"] for g in gaps if g["run"] == "xs"), 0.1)
    text = report.render(rows + gaps, [Run("clip", "a.pt"), Run("xs", "b.pt")], "m", notes=["a note"])
    assert "| dataset | task | metric | clip | xs | Δ xs − clip |" in text
    assert "| bg/mixed_same | zero-shot | top-1 | 75.00 | 70.00 | -5.00 |" in text
    assert "| bg | zero-shot | BG-Gap (lower is better) | 25.00 | 10.00 | -15.00 |" in text
    assert "acc5" not in text.split("All metrics")[0]  # headline metrics only
    assert "- a note" in text


def test_checkpoint_identity_is_the_sha256_hashed_again_only_when_the_stat_changes(tmp_path, monkeypatch):
    path = tmp_path / "epoch_latest.pt"
    path.write_bytes(b"weights v1")
    identity = checkpoints.identify(str(path))
    assert identity == {"size": 10, "mtime_ns": path.stat().st_mtime_ns,
                        "content": "sha256:" + hashlib.sha256(b"weights v1").hexdigest()}
    assert checkpoints.identify("openai") == {"content": "pretrained:openai"}
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(checkpoints.hashlib, "sha256", lambda: pytest.fail("hashed an unchanged file"))
    assert checkpoints.identify(str(path), known=identity) == identity
    assert not checkpoints.changed_since(identity, str(path))
    os.utime(path, ns=(0, identity["mtime_ns"] + 1))  # a touch: same bytes, new mtime
    assert checkpoints.changed_since(identity, str(path))
    monkeypatch.setattr(checkpoints.hashlib, "sha256", real_sha256)
    touched = checkpoints.identify(str(path), known=identity)
    assert touched["content"] == identity["content"] and touched["mtime_ns"] == identity["mtime_ns"] + 1


def _check_and_save(out, runs, model="m"):
    """``checkpoints.check`` then save, as compare does; the stale runs as {name: reason}."""
    records, stale = checkpoints.check(str(out), model, [Run(name, str(path)) for name, path in runs.items()])
    checkpoints.save(str(out), records)
    return {run.name: reason for run, reason in stale}


def test_run_names_are_bound_to_checkpoint_content(tmp_path):
    out, a, moved, other = tmp_path / "out", tmp_path / "a.pt", tmp_path / "moved.pt", tmp_path / "other.pt"
    out.mkdir()
    a.write_bytes(b"weights v1")
    assert set(_check_and_save(out, {"a": a})) == {"a"}  # new: any files left in out/ are of unknown origin
    assert _check_and_save(out, {"a": a}) == {}
    moved.write_bytes(b"weights v1")
    assert _check_and_save(out, {"a": moved}) == {}  # same content elsewhere (moved logs): reused
    assert json.loads((out / "runs.json").read_text())["a"]["checkpoint"] == str(moved)
    moved.write_bytes(b"weights v2")  # overwritten in place, same size
    reason = _check_and_save(out, {"a": moved})["a"]
    assert reason.startswith(f"checkpoint {moved} changed since its results were computed (was sha256 ")
    other.write_bytes(b"weights v3")
    with pytest.raises(SetupError, match=f"already holds results of run 'a' for {moved} .model m., not for {other}"):
        checkpoints.check(str(out), "m", [Run("a", str(other))])
    with pytest.raises(SetupError, match="already holds results of run 'a'"):
        checkpoints.check(str(out), "another-model", [Run("a", str(moved))])
    (out / "runs.json").write_text(json.dumps({"a": {"model": "m", "checkpoint": str(moved)}}))  # older version
    assert "no record of the checkpoint content" in _check_and_save(out, {"a": moved})["a"]


def test_forget_drops_only_that_runs_files(tmp_path):
    out = str(tmp_path)
    for run in ("a", "b"):
        os.makedirs(runner.result_dir(out, run))
        open(os.path.join(runner.result_dir(out, run), "x__zeroshot_classification.json"), "w").close()
        os.makedirs(os.path.join(runner.feature_root(out, run), "model-ckpt-wds_x"))
        os.makedirs(os.path.dirname(runner.classifier_path(out, run)), exist_ok=True)
        open(runner.classifier_path(out, run), "w").close()
    assert runner.forget(out, "a") is True
    assert not any(os.path.exists(p) for p in (runner.result_dir(out, "a"), runner.feature_root(out, "a"),
                                               runner.classifier_path(out, "a")))
    assert all(os.path.exists(p) for p in (runner.result_dir(out, "b"), runner.feature_root(out, "b"),
                                           runner.classifier_path(out, "b")))
    assert runner.forget(out, "a") is False


# ---- linear probe: where its training split comes from, and its refusals -------------------------------
def _wds_set(folder, classes, splits=("test",)):
    from xsample_openclip.data import writers

    for split in splits:
        writers.write_cb_classification(folder, [("k0", b"not decoded here", 0)], classes, ["a {c}"], split=split)
    return str(folder)


def test_group_train_split_probes_every_variant(tmp_path):
    for variant in ("original", "mixed_same", "mixed_rand"):
        _wds_set(tmp_path / "g" / variant, ["a", "b"])
    plain = layouts.wds_specs("g", str(tmp_path / "g"))
    assert all(LINEAR_PROBE not in s.tasks for s in plain)
    assert "or " + str(tmp_path / "g") + "/train/nshards.txt" in plain[0].notes[0]
    _wds_set(tmp_path / "g", ["a", "b"], splits=("train",))  # the group's own training images
    specs = layouts.wds_specs("g", str(tmp_path / "g"))
    assert [s.name for s in specs] == ["g/original", "g/mixed_same", "g/mixed_rand"]
    assert all(LINEAR_PROBE in s.tasks and s.train_root == str(tmp_path / "g") and not s.notes for s in specs)


def test_probe_train_flag_and_its_errors(tmp_path):
    test_only = _wds_set(tmp_path / "held_out", ["cat", "dog"])
    train = _wds_set(tmp_path / "probe", ["cat", "dog"], splits=("train",))
    other_classes = _wds_set(tmp_path / "other", ["cat", "car"], splits=("train",))
    no_train = _wds_set(tmp_path / "no_train", ["cat", "dog"])
    args = compare.build_parser().parse_args(["--model", "m", "--run", "a=x", "--out", "o", "--wds",
                                              f"h={test_only}", "--probe-train", f"h={train}"])
    specs, _ = compare.datasets_from_args(args)
    assert specs[0].train_root == train and LINEAR_PROBE in specs[0].tasks and not specs[0].notes
    base = layouts.wds_specs("h", test_only)
    with pytest.raises(SetupError, match="classnames.txt differs"):
        layouts.attach_probe_train(base, "h", other_classes)
    with pytest.raises(SetupError, match="train/nshards.txt does not exist"):
        layouts.attach_probe_train(base, "h", no_train)
    with pytest.raises(SetupError, match="no wds dataset or group named 'x'"):
        layouts.attach_probe_train(base, "x", train)
    from xsample_openclip.data import writers

    writers.write_cb_retrieval(tmp_path / "ret", [("k0", b"x", ["a caption"])])
    with pytest.raises(SetupError, match="retrieval set"):
        layouts.attach_probe_train(layouts.wds_specs("r", str(tmp_path / "ret")), "r", train)


def test_linear_probe_refusals(tmp_path, monkeypatch):
    import importlib.metadata

    from xsample_openclip.eval import linear_probe

    _no_evaluation(monkeypatch)
    with pytest.raises(SetupError, match="val_proportion must be in"):
        linear_probe.ProbeSettings(val_proportion=1.0).check()
    with pytest.raises(SetupError, match="4 training images cannot give a validation split"):
        linear_probe.split_train_val(4, linear_probe.ProbeSettings())
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.7.0" if name == "clip_benchmark" else real(name))
    spec = DatasetSpec("x", "wds/x", str(tmp_path), (LINEAR_PROBE,))
    with pytest.raises(SetupError, match="mirrors clip_benchmark 1.6.2's metrics/linear_probe.py, but "
                                         "clip_benchmark 1.7.0 is installed"):
        compare.compare("xs-tiny-vit-32", {"a": __file__}, [spec], tasks="linear_probe", out=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
