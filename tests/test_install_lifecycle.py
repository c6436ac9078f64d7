"""Installing, moving and uninstalling the package leave the user's Python as it was.

Each test makes a bare virtual environment (no dependencies: the start-up hook and the console script
need only the standard library to be installed and found) and installs a copy of this checkout into it
with pip, as a user would (pip builds it in an isolated environment from the package index):
- ``pip uninstall xsample-openclip`` after a regular or an editable install, and after the hook ran,
  leaves exactly the files the environment had before the install (site-packages and bin/);
- an editable install whose checkout was moved away: every Python start stays silent (the ``.pth`` line
  finds the package before importing it); the unguarded line, as a control, prints an error there.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What a build of the package reads from the checkout.
SOURCES = ("setup.py", "pyproject.toml", "README.md", "xsample_openclip", "patches", "eval")
HOOK_ACTIVE = "import sys; print('xsample_openclip.startup' in sys.modules)"


def _run(cmd, cwd, check=True):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _checkout(dest):
    dest.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def _venv(path):
    _run([sys.executable, "-m", "venv", path], cwd=path.parent)
    return path / "bin" / "python"


def _pip(python, *args, cwd):
    return _run([python, "-m", "pip", "--disable-pip-version-check", "-q", *args], cwd=cwd)


def _tree(venv):
    return {str(p.relative_to(venv)) for p in venv.rglob("*")}


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_uninstall_leaves_no_file_behind(tmp_path, editable):
    src = _checkout(tmp_path / "src")
    python = _venv(tmp_path / "venv")
    before = _tree(tmp_path / "venv")
    _pip(python, "install", "--no-deps", *(["-e"] if editable else []), src, cwd=tmp_path)
    assert _run([python, "-c", HOOK_ACTIVE], cwd=tmp_path).stdout.strip() == "True"
    script = tmp_path / "venv" / "bin" / "xsample-openclip-train"
    assert script.is_file()
    added = _tree(tmp_path / "venv") - before
    assert any(p.endswith("xsample_openclip_hook.pth") for p in added), sorted(added)
    _pip(python, "uninstall", "-y", "xsample-openclip", cwd=tmp_path)
    after = _tree(tmp_path / "venv")
    assert after == before, {"left behind": sorted(after - before), "removed": sorted(before - after)}


def test_moved_editable_checkout_leaves_every_python_start_silent(tmp_path):
    src = _checkout(tmp_path / "src")
    python = _venv(tmp_path / "venv")
    _pip(python, "install", "--no-deps", "-e", src, cwd=tmp_path)
    assert _run([python, "-c", HOOK_ACTIVE], cwd=tmp_path).stdout.strip() == "True"

    src.rename(tmp_path / "moved")
    moved = _run([python, "-c", HOOK_ACTIVE], cwd=tmp_path)
    assert (moved.stdout.strip(), moved.stderr) == ("False", "")
    silent = _run([python, "-c", "pass"], cwd=tmp_path)
    assert (silent.returncode, silent.stdout, silent.stderr) == (0, "", "")

    # control: the unguarded line this replaced does print an error at every start there
    site_packages = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=tmp_path).stdout.strip())
    (site_packages / "zz_unguarded_control.pth").write_text("import xsample_openclip.startup\n")
    loud = _run([python, "-c", "pass"], cwd=tmp_path)
    assert "Error processing line 1" in loud.stderr and "ModuleNotFoundError" in loud.stderr, loud.stderr
