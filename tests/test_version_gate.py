"""The version gate: a supported range of OpenCLIP releases, one table of relied-on sources per release.

Checked against the installed OpenCLIP (the CI legs install each supported release in turn): its
release is in the range and has a table, every gated hash is its source (or it lacks what the table
says it lacks), nothing is refused; every table covers exactly the gated entries; every function
``patches/`` wraps, and every function of ``open_clip.transform`` the two views are made of, is gated;
a release outside the range or a changed source is refused naming the function and the range; the
3.0.0 shim refuses ``--lock-text`` (so ``--loss xclr``) there, before any step, and only there."""
import argparse
import hashlib
import importlib
import importlib.metadata
import inspect
import re
import subprocess
import sys

import open_clip
import pytest

import cli_runs as cr
from xsample_openclip import SUPPORTED_OPEN_CLIP, patches
from xsample_openclip.patches import openclip_3_0_0, version

pytestmark = pytest.mark.openclip_compat

RELEASES = ("3.0.0", "3.1.0", "3.2.0", "3.3.0")  # every release of the range on PyPI when written
INSTALLED = open_clip.__version__


def stock_source(module_name, path):
    """The source of the OpenCLIP object, read without the gate's helpers (past any patch's wrapper)."""
    obj = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    while hasattr(obj, "__wrapped__"):
        obj = obj.__wrapped__
    return inspect.getsource(obj)


def has_attr_path(module_name, path):
    obj = importlib.import_module(module_name)
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


# --- the installed release -----------------------------------------------------------------------------

def test_the_installed_open_clip_is_a_supported_release_with_its_own_table():
    # the legs put an older release first on sys.path: the package metadata must agree with the module
    assert importlib.metadata.version("open_clip_torch") == INSTALLED
    assert INSTALLED in version.SOURCES and version.reference_release() == INSTALLED
    assert version.unsupported_version_message() is None


@pytest.mark.parametrize("entry", sorted(version.GATED), ids=lambda e: f"{e[0]}.{e[1]}")
def test_each_gated_hash_is_the_installed_source(entry):
    module_name, path = entry
    expected = version.SOURCES[INSTALLED][entry]
    if expected == version.ABSENT:
        assert not has_attr_path(module_name, path)
    else:
        assert hashlib.sha256(stock_source(module_name, path).encode()).hexdigest() == expected


def test_nothing_is_refused_with_the_installed_release():
    patches.install()
    assert version.changed_sources() == []


def test_a_training_subprocess_sees_the_same_release(tmp_path):
    """What the CLI runs of a leg train with: the subprocess imports the same OpenCLIP as this process."""
    code = "import open_clip, importlib.metadata as m; print(open_clip.__version__, m.version('open_clip_torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split() == [INSTALLED, INSTALLED]


# --- the tables ------------------------------------------------------------------------------------------

def test_the_range_and_its_tables():
    assert SUPPORTED_OPEN_CLIP == ">=3.0,<3.4"
    assert version.supported_bounds() == ((3, 0), (3, 4))
    assert version.supported_text() == "open-clip-torch 3.0.0 through 3.3.x"
    assert tuple(sorted(version.SOURCES)) == RELEASES
    assert set(version.SHIMS) <= set(version.SOURCES)
    for release in RELEASES:
        assert version.reference_release(release) == release
    assert version.reference_release("3.3.1") == "3.3.0"  # a later patch release: its series' newest table


@pytest.mark.parametrize("release", RELEASES)
def test_every_table_covers_exactly_the_gated_entries(release):
    table = version.SOURCES[release]
    assert set(table) == set(version.GATED)
    assert all(h == version.ABSENT or re.fullmatch(r"[0-9a-f]{64}", h) for h in table.values())
    assert all(text.strip() for text in version.GATED.values())


def test_the_tables_differ_where_the_releases_differ():
    """What a diff of the wheels shows (the documented differences, no other)."""
    def diff(a, b):
        return {e for e in version.GATED if version.SOURCES[a][e] != version.SOURCES[b][e]}

    assert diff("3.2.0", "3.3.0") == {("open_clip_train.train", "evaluate"), ("open_clip_train.main", "main"),
                                      ("open_clip.transform", "image_transform"),
                                      ("open_clip.transform", "MaybeConvertMode"),
                                      ("open_clip.transform", "MaybeToTensor")}
    assert diff("3.1.0", "3.2.0") == set()
    assert diff("3.0.0", "3.1.0") == {("open_clip.model", "CLIP.lock_text_tower"),
                                      ("open_clip.transformer", "lock_text_tower")}


# --- what must be gated -------------------------------------------------------------------------------------

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


#: Called while OpenCLIP builds its transforms, but deciding only the image size, mean and std (the
#: model's preprocessing, as in stock training), not what a view's augmentation means.
PREPROCESS_ONLY = {"PreprocessCfg", "merge_preprocess_dict", "merge_preprocess_kwargs"}


def test_the_augmentation_code_the_views_rely_on_is_gated():
    """Every function of open_clip.transform that runs while OpenCLIP builds the train transform from the
    two views' aug_cfg, and while that transform makes views, is gated (recorded with a profiler)."""
    import numpy as np
    from PIL import Image

    from open_clip import transform
    from xsample_openclip import model_configs
    from xsample_openclip.views import SIMCLR_AUG

    model_configs.register()
    called = set()

    def record(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == transform.__file__:
            called.add(frame.f_code.co_qualname.split(".")[0])

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    sys.setprofile(record)
    try:
        _, train, _ = open_clip.create_model_and_transforms(cr.MODEL, aug_cfg=dict(SIMCLR_AUG))
        for _ in range(20):  # jitter p=0.8, grayscale p=0.2: both run
            train(image)
    finally:
        sys.setprofile(None)
    assert {"image_transform", "color_jitter", "gray_scale"} <= called  # the recorder saw the work
    gated = {path.split(".")[0] for module, path in version.GATED if module == "open_clip.transform"}
    assert called - PREPROCESS_ONLY <= gated, f"not gated: {sorted(called - PREPROCESS_ONLY - gated)}"
    assert {"AugmentationCfg", "image_transform"} <= gated  # the dataclass's __init__ is generated code


# --- refusals -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("release", ["2.32.0", "2.24.0", "3.4.0", "4.0.0", "3.4.0.dev0", "not installed"])
def test_a_release_outside_the_range_is_refused_naming_the_range(monkeypatch, release):
    monkeypatch.setattr(version, "installed_open_clip_version", lambda: release)
    message = version.unsupported_version_message()
    assert f"open-clip-torch {release} is installed" in message
    assert "open-clip-torch 3.0.0 through 3.3.x" in message
    assert "pip install 'open-clip-torch[training]>=3.0,<3.4'" in message
    assert "without --loss and the --xsample-* flags, OpenCLIP trains as it does without the plugin" in message
    assert version.changed_sources() == [message]


def test_a_wrong_hash_is_reported_with_the_function_and_the_range():
    entry = ("open_clip_train.train", "evaluate")
    wrong = {INSTALLED: {**version.SOURCES[INSTALLED], entry: "0" * 64}}
    [message] = version.changed_sources(wrong)
    assert message.startswith(f"open_clip_train.train.evaluate in open-clip-torch {INSTALLED} is not the "
                              f"open-clip-torch {INSTALLED} code")
    assert "patches/evaluation.py" in message and "expected 000000000000" in message
    assert "supports open-clip-torch 3.0.0 through 3.3.x" in message
    assert "'open-clip-torch[training]>=3.0,<3.4'" in message and "--loss clip still runs" in message


def test_an_attribute_a_table_calls_absent_but_present_is_refused():
    entry = ("open_clip.transform", "image_transform")
    [message] = version.changed_sources({INSTALLED: {**version.SOURCES[INSTALLED], entry: version.ABSENT}})
    assert message.startswith("open_clip.transform.image_transform in open-clip-torch") and "expected absent" in message


def xclr_args(model=cr.MODEL):
    return argparse.Namespace(model=model, lock_text=True, force_custom_text=False)


def test_the_3_0_0_shim_refuses_lock_text_for_models_built_as_clip_only():
    [message] = openclip_3_0_0.refusals(xclr_args())
    assert f"--lock-text with --model {cr.MODEL}" in message and "no lock_text_tower" in message
    assert "'open-clip-torch[training]>=3.1,<3.4'" in message and "--loss xclr" in message
    assert openclip_3_0_0.refusals(argparse.Namespace(model=cr.MODEL, lock_text=False)) == []
    forced = argparse.Namespace(model=cr.MODEL, lock_text=True, force_custom_text=True)
    assert openclip_3_0_0.refusals(forced) == []  # CustomTextCLIP has lock_text_tower in 3.0.0
    assert openclip_3_0_0.refusals(xclr_args("local-dir:/nowhere")) != []  # class unknown at parsing


XCLR = ["--train-data", "x.csv", "--model", cr.MODEL, "--device", "cpu", "--loss", "xclr", "--xsample-views",
        "2", "--lock-text", "--lock-text-freeze-layer-norm", "--xsample-tau-s", "0.2", "--name", "gate"]


def test_xclr_is_refused_before_any_step_on_3_0_0_and_parses_elsewhere(tmp_path):
    """Through main: on 3.0.0 the refusal, exit 2 and no log folder; on every other release the run's
    arguments pass parsing (the xclr training runs of the leg check the rest)."""
    if INSTALLED == "3.0.0":
        proc = subprocess.run([sys.executable, "-m", "open_clip_train.main", *XCLR], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "open-clip-torch 3.0.0's CLIP has no lock_text_tower" in proc.stderr
        assert not (tmp_path / "logs").exists()
    else:
        from open_clip_train import params

        assert params.parse_args(XCLR).loss == "xclr"
        assert openclip_3_0_0.refusals(params.parse_args(XCLR)) != []  # what 3.0.0 would refuse


# --- what differs between the releases, through main -------------------------------------------------------

def val_losses(run_dir, key):
    return [float(v) for v in re.findall(rf"\t{key}: ([0-9.eE+-]+)", (run_dir / "out.log").read_text())]


def test_two_process_validation_reports_the_plugin_objective(tmp_path):
    """3.0.0-3.2.x validate through the DDP wrapper on rank 0 alone (a collective mismatch with the other
    rank, measured on 3.2.0); the shim hands them the bare forward as 3.3.0 does. Two gloo processes with
    --gather-with-grad (batch 8 each) and one process with --accum-freq 2 (batch 8) take the same steps
    and validate in the same batches of 8: their validation losses, OpenCLIP's and the plugin's, agree."""
    import tiny_data

    csv = tiny_data.write_csv(tmp_path / "data", n=16)
    init = cr.save_init(tmp_path / "init.pt")
    runs = {}
    for name, nproc, extra in (("one", 1, ("--accum-freq", "2")), ("two", 2, ("--gather-with-grad",))):
        (tmp_path / name).mkdir()
        argv = cr.train_argv(csv, init, 8, "--loss", "xsample", "--xsample-tau-s", "0.2", "--val-data", str(csv),
                             *extra, epochs=2)
        runs[name], _ = cr.launch(tmp_path / name, argv, nproc=nproc)
    for key in ("clip_val_loss", "xsample_val_loss"):
        one, two = val_losses(runs["one"], key), val_losses(runs["two"], key)
        assert len(two) == 2 and two == pytest.approx(one, rel=1e-3), key
    assert "CPU distributed training (2 processes, backend gloo)" in (runs["two"] / "out.log").read_text()


# --- outside the range, through main: a later release and a modified fork -----------------------------------

def copied_open_clip(root, release=None, edit=None):
    """The installed open_clip and open_clip_train copied under ``root`` (put first on PYTHONPATH): with
    another release number (module and package metadata), or with ``edit`` (file, old, new) applied."""
    import shutil
    from pathlib import Path

    site = Path(open_clip.__file__).parent.parent
    for package in ("open_clip", "open_clip_train"):
        shutil.copytree(site / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    from xsample_openclip import model_configs  # out of range the plugin registers nothing: a config of its own

    shutil.copy(model_configs.CONFIG_DIR / f"{cr.MODEL}.json", root / "open_clip" / "model_configs")
    [info] = site.glob(f"open_clip_torch-{INSTALLED}.dist-info")
    shutil.copytree(info, root / info.name.replace(INSTALLED, release or INSTALLED))
    if release:
        for path in (root / "open_clip" / "version.py", root / info.name.replace(INSTALLED, release) / "METADATA"):
            text = path.read_text()
            path.write_text(text.replace(f"'{INSTALLED}'", f"'{release}'").replace(f"Version: {INSTALLED}",
                                                                                  f"Version: {release}"))
    if edit:
        path, old, new = root / edit[0], edit[1], edit[2]
        assert path.read_text().count(old) == 1
        path.write_text(path.read_text().replace(old, new))
    return str(root)


def main_in(tmp_path, pythonpath, *argv):
    import os

    import tiny_data

    csv = tiny_data.write_csv(tmp_path / "data", n=8)
    cwd = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    cwd.mkdir()
    env = dict(os.environ, PYTHONPATH=pythonpath, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "open_clip_train.main", "--train-data", str(csv), "--dataset-type", "csv",
           "--model", cr.MODEL, "--batch-size", "4", "--epochs", "1", "--workers", "0", "--device", "cpu",
           "--lr", "0.01", "--name", "r", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300), cwd / "logs" / "r"


TRAIN_ONE_EPOCH = ("open_clip_train/train.py", "def train_one_epoch(model, data, loss, epoch, optimizer, scaler, "
                   "scheduler, dist_model, args, tb_writer=None):\n",
                   "def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, "
                   "tb_writer=None):\n    pass  # a fork's change\n")


@pytest.mark.parametrize("kind", ["release 3.4.0", "modified fork"])
def test_outside_the_range_a_plugin_loss_is_refused_and_stock_training_runs(tmp_path, kind):
    if kind == "release 3.4.0":
        path = copied_open_clip(tmp_path / "oc", release="3.4.0")
        refusal = ("patches open-clip-torch 3.0.0 through 3.3.x, but open-clip-torch 3.4.0 is installed; install a "
                   "supported release, e.g. pip install 'open-clip-torch[training]>=3.0,<3.4'")
        stock = ()  # out of range nothing is patched and OpenCLIP has no --loss: stock flags only
    else:
        path = copied_open_clip(tmp_path / "oc", edit=TRAIN_ONE_EPOCH)
        refusal = (f"open_clip_train.train.train_one_epoch in open-clip-torch {INSTALLED} is not the "
                   f"open-clip-torch {INSTALLED} code that xsample-openclip")
        stock = ("--loss", "clip")
    proc, logs = main_in(tmp_path, path, "--loss", "xsample", "--xsample-tau-s", "0.2")
    assert proc.returncode != 0 and refusal in proc.stderr and "open-clip-torch 3.0.0 through 3.3.x" in proc.stderr
    assert not logs.exists()  # refused before the log folder, so before any step
    proc, logs = main_in(tmp_path, path, *stock)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (logs / "checkpoints" / "epoch_1.pt").is_file() and "Train Epoch: 0" in (logs / "out.log").read_text()
    probe = ("import open_clip, open_clip_train.train as t; "
             "print(open_clip.__file__, getattr(t.train_one_epoch, '__xsample_patched__', False))")
    out = subprocess.run([sys.executable, "-c", probe], env={**__import__("os").environ, "PYTHONPATH": path},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0].startswith(path)
    assert out[1] == ("False" if kind == "release 3.4.0" else "True")  # in range, a fork is patched but refused
