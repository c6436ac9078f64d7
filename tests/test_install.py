"""The package is importable the way it was installed, and the start-up hook is in site-packages."""
import os
import sysconfig
from pathlib import Path

import pytest

import xsample_openclip
from xsample_openclip import patches, registry

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install_smoke


def test_install_mode_and_start_up_hook():
    purelib = Path(sysconfig.get_paths()["purelib"])
    assert (purelib / "xsample_openclip_hook.pth").read_text().strip() == "import xsample_openclip.startup"
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
