"""``python -m xsample_openclip.doctor``: the key lines and the exit status, on this (good) environment
and on faked bad ones (an OpenCLIP outside the range, a changed relied-on function, the hook off, data
``auto`` cannot sample, an unknown loss)."""
import argparse
import os
import subprocess
import sys

import pytest

from xsample_openclip import doctor
from xsample_openclip.patches import version
from xsample_openclip.targets.sampling import calibration_sample


def _doctor(*argv, env=None, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "xsample_openclip.doctor", *map(str, argv)], capture_output=True,
                          text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env or {})))
    assert proc.stderr == "" or proc.returncode in (0, 1), proc.stderr
    return proc.returncode, proc.stdout


def _line(out, name):
    found = [line for line in out.splitlines() if line.startswith(name + ":")]
    assert len(found) == 1, out
    return found[0][len(name) + 1:].strip()


def test_a_good_environment_is_ready(csv_data, tmp_path):
    code, out = _doctor("--train-data", csv_data, cwd=tmp_path)
    assert code == 0, out
    import open_clip
    import torch

    import xsample_openclip

    assert _line(out, "xsample-openclip").startswith(xsample_openclip.__version__)
    expected = os.environ.get("XSAMPLE_EXPECT_INSTALL")
    if expected:
        assert _line(out, "xsample-openclip").endswith(f"({expected} install)")
    assert _line(out, "torch").startswith(torch.__version__)
    assert _line(out, "OpenCLIP").startswith(f"open-clip-torch {open_clip.__version__}, supported")
    assert _line(out, "start-up hook").startswith("active in this interpreter")
    assert _line(out, "console script").endswith("xsample-openclip-train")
    assert "xsample (xsample-openclip)" in _line(out, "losses")
    assert "all-MiniLM-L6-v2 from " in _line(out, "caption encoder")
    args = argparse.Namespace(train_data=str(csv_data), seed=0, dataset_type="auto", csv_caption_key="title",
                              csv_separator="\t", xsample_calibration_data=None, xsample_tau_s="auto")
    assert _line(out, "tau_s auto") == calibration_sample(args).describe()
    assert out.rstrip().endswith("ready for --loss xsample")


def test_the_hook_off_fails_unless_runs_use_the_console_script(tmp_path):
    code, out = _doctor(env={"XSAMPLE_OPENCLIP_DISABLE": "1"}, cwd=tmp_path)
    assert code == 1
    assert _line(out, "start-up hook").startswith("inactive in this interpreter: XSAMPLE_OPENCLIP_DISABLE is set")
    assert "'python -m open_clip_train.main --loss xsample' would be refused" in out
    code, out = _doctor("--launcher", "console-script", env={"XSAMPLE_OPENCLIP_DISABLE": "1"}, cwd=tmp_path)
    assert code == 0, out
    assert "(not needed by the console script)" in _line(out, "start-up hook")


def test_an_open_clip_outside_the_range_fails(monkeypatch, capsys):
    monkeypatch.setattr(version, "installed_open_clip_version", lambda: "2.32.0")
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert _line(out, "OpenCLIP").startswith("open-clip-torch 2.32.0, outside the supported range")
    assert "NOT READY for --loss xsample" in out and version.supported_text() in out


def test_a_changed_relied_on_function_fails(monkeypatch, capsys):
    reference = version.reference_release()
    entry = ("open_clip_train.train", "train_one_epoch")
    changed = {**version.SOURCES[reference], entry: "0" * 64}
    monkeypatch.setattr(version, "SOURCES", {**version.SOURCES, reference: changed})
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "1 relied-on function(s) differ" in _line(out, "OpenCLIP")
    assert "open_clip_train.train.train_one_epoch" in out
    assert doctor.main(["--loss", "clip"]) == 0  # stock OpenCLIP's loss is never refused by the gate
    capsys.readouterr()


def test_an_open_clip_that_cannot_be_imported_fails(monkeypatch, capsys):
    """As with torch 2.13.0's CPU build beside torchvision's CUDA build, whose operators do not load."""
    monkeypatch.setitem(sys.modules, "open_clip", None)  # importing it now raises ImportError
    assert doctor.main(["--loss", "clip"]) == 1
    assert "cannot be imported (ModuleNotFoundError" in _line(capsys.readouterr().out, "OpenCLIP")


def test_data_auto_cannot_sample_fails(tmp_path, capsys):
    assert doctor.main(["--train-data", str(tmp_path / "missing.csv")]) == 1
    out = capsys.readouterr().out
    assert _line(out, "tau_s auto").startswith("cannot sample captions")
    assert "--xsample-tau-s 0.1" in out  # the refusal a run gives, with its ways out


def test_an_unknown_loss_fails(capsys):
    assert doctor.main(["--loss", "nonexistent"]) == 1
    assert "--loss nonexistent is not a registered loss" in capsys.readouterr().out


def test_openclip_defaults_are_openclips():
    from open_clip_train.params import parse_args

    stock = parse_args([])
    assert {k: getattr(stock, k) for k in doctor.OPENCLIP_DEFAULTS} == doctor.OPENCLIP_DEFAULTS


@pytest.mark.parametrize("module", ["open_clip_train.main", "xsample_openclip.launch"])
def test_training_does_not_import_the_doctor(module):
    code = f"import sys, {module}; print('xsample_openclip.doctor' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.stdout.strip() == "False", proc.stderr
