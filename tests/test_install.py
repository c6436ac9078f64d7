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
