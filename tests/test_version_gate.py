"""The version gate lists every OpenCLIP function the patches rely on, with the hash of the installed
open-clip-torch 3.3.0 source: a wrong hash, or a patched function left out of the gate, fails here."""
import hashlib
import importlib
import inspect

import open_clip
import pytest

from xsample_openclip import patches
from xsample_openclip.patches import version


def stock_source(module_name, path):
    """The source of the OpenCLIP object, read without the gate's helpers (past any patch's wrapper)."""
    obj = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    while hasattr(obj, "__wrapped__"):
        obj = obj.__wrapped__
    return inspect.getsource(obj)


def test_the_installed_open_clip_is_the_gated_release():
    assert open_clip.__version__ == "3.3.0"


@pytest.mark.parametrize("entry", sorted(version.GATED), ids=lambda e: f"{e[0]}.{e[1]}")
def test_each_gated_hash_is_the_installed_3_3_0_source(entry):
    module_name, path = entry
    expected = hashlib.sha256(stock_source(module_name, path).encode()).hexdigest()
    assert version.GATED[entry].sha256 == expected
    assert version.GATED[entry].relied_on_by.strip()


def test_nothing_is_refused_with_the_installed_3_3_0():
    patches.install()
    assert version.changed_sources() == []


def test_every_patched_open_clip_function_is_gated():
    """What patches/ wraps (marked by _patch_attr) must be gated; a new wrapper needs its GATED entry."""
    patches.install()
    wrapped = set()
    for module_name in patches.PATCHES:
        module = importlib.import_module(module_name)
        wrapped |= {(module_name, name) for name, value in vars(module).items()
                    if getattr(value, patches._MARK, False)}
    assert {("open_clip_train.params", "parse_args"), ("open_clip_train.train", "train_one_epoch"),
            ("open_clip_train.train", "evaluate")} <= wrapped  # the scan sees the wrappers
    # create_loss is replaced outright for plugin losses (the stock one runs only for --loss clip)
    missing = wrapped - set(version.GATED) - {("open_clip", "create_loss"), ("open_clip.factory", "create_loss")}
    assert not missing, f"wrapped but not in patches/version.py GATED: {sorted(missing)}"
    for needed in [("open_clip_train.main", "main"), ("open_clip_train.data", "CsvDataset.__init__")]:
        assert needed in version.GATED


def test_a_wrong_hash_is_reported_with_the_function_and_the_fix():
    entry = ("open_clip_train.train", "evaluate")
    wrong = {entry: version.GATED[entry]._replace(sha256="0" * 64)}
    [message] = version.changed_sources(wrong)
    assert message.startswith("open_clip_train.train.evaluate in open-clip-torch 3.3.0 is not the 3.3.0 code")
    assert "patches/evaluation.py" in message and "expected 000000000000" in message
    assert "install 'open-clip-torch[training]==3.3.0'" in message
