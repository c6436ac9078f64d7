"""The demo trains what it reports and reuses a run only if nothing that determines its result changed.

Issue 17, fault 1: without the plugin, ``--loss xsample`` trains plain CLIP silently, so the demo trains
through the hook-free launcher, checks every run's params.txt, and the start-up hook refuses the silent
case. Fault 4: the run key hashes the data's content, the loss's flag defaults and the training code.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_data

from xsample_openclip import plugins, startup
from xsample_openclip.data import shapes_data
from xsample_openclip.demo import fingerprint, runs
from xsample_openclip.demo.trained_loss import WrongLossError, check_trained_loss

SETTINGS = runs.TrainSettings(model="xs-tiny-vit-32", epochs=1, batch_size=32, warmup=1)
XSAMPLE = runs.RunSpec("xsample-s0", ("--loss", "xsample"), 0)
CLIP = runs.RunSpec("clip-s0", ("--loss", "clip"), 0)


@pytest.fixture
def data(tmp_path):
    return runs.TrainData(csv=str(tiny_data.write_csv(tmp_path / "data", n=64)), num_samples=64)


def fake_finished_run(logs, spec, data, loss_line):
    """A run folder as the demo leaves it: final checkpoint, params.txt, run key."""
    ckpt = runs.checkpoint_of(logs, spec, SETTINGS)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    (logs / spec.name / "params.txt").write_text(f"epochs: 1\n{loss_line}model: xs-tiny-vit-32\n")
    (logs / spec.name / "run_key.txt").write_text(runs.run_key(spec, data, SETTINGS, logs))
    return ckpt


class TrainingStarted(Exception):
    pass


@pytest.fixture
def no_training(monkeypatch):
    """Records (and stops) any attempt to start a trainer."""
    started = []

    def popen(cmd, *args, **kwargs):
        started.append(cmd)
        raise TrainingStarted(cmd)

    monkeypatch.setattr(runs.subprocess, "Popen", popen)
    return started


# ---------------------------------------------------------------------------------- fault 1: wrong loss
def test_params_check_rejects_clip_when_xsample_was_asked(tmp_path):
    run = tmp_path / "xsample-s0"
    run.mkdir()
    (run / "params.txt").write_text("lr: 0.001\nloss: clip\nloss_dist_impl: None\n")
    with pytest.raises(WrongLossError, match=r"asked for --loss xsample.*'loss: clip'.*xsample_openclip\.launch"):
        check_trained_loss(run, "xsample")
    (run / "params.txt").write_text("lr: 0.001\nloss_dist_impl: xsample\n")  # what stock OpenCLIP writes
    with pytest.raises(WrongLossError, match="no 'loss:' line"):
        check_trained_loss(run, "xsample")
    (run / "params.txt").write_text("loss: xsample\nloss_dist_impl: None\n")
    check_trained_loss(run, "xsample")
    with pytest.raises(WrongLossError, match="xsample-siglip"):
        check_trained_loss(run, "xsample-siglip")


def test_a_finished_run_that_trained_another_loss_is_not_reused(tmp_path, data, no_training):
    logs = tmp_path / "logs"
    fake_finished_run(logs, XSAMPLE, data, "loss: clip\n")
    with pytest.raises(WrongLossError, match="xsample-s0 was asked for --loss xsample"):
        runs.train(XSAMPLE, data, SETTINGS, logs)
    assert not no_training


def test_demo_trains_through_the_launcher_and_checks_the_loss(tmp_path, data, monkeypatch):
    """With the start-up hook disabled in the trainer's environment, the demo still trains X-Sample."""
    monkeypatch.setenv("XSAMPLE_OPENCLIP_DISABLE", "1")
    logs = tmp_path / "logs"
    ckpt = runs.train(XSAMPLE, data, SETTINGS, logs)
    assert ckpt.is_file()
    params = (logs / "xsample-s0" / "params.txt").read_text()
    assert "loss: xsample\n" in params and "xsample_tau_s: " in params
    assert "Loss: xsample" in (logs / "xsample-s0" / "out.log").read_text()


STOCK_LAUNCHER = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "PatchOnImport"]  # as if no hook ran
from xsample_openclip import model_configs  # the tiny model's config, which the plugin registers otherwise
model_configs.register()
runpy.run_module("open_clip_train.main", run_name="__main__", alter_sys=True)
"""


def test_demo_stops_when_its_trainer_trains_stock_clip(tmp_path, data, monkeypatch):
    script = tmp_path / "stock_main.py"
    script.write_text(STOCK_LAUNCHER)
    monkeypatch.setattr(runs, "LAUNCHER", (str(script),))
    logs = tmp_path / "logs"
    with pytest.raises(WrongLossError, match=r"asked for --loss xsample.*no 'loss:' line"):
        runs.train(XSAMPLE, data, SETTINGS, logs)
    params = (logs / "xsample-s0" / "params.txt").read_text()
    assert "loss_dist_impl: xsample" in params  # it really was stock OpenCLIP's silent misreading
    assert not (logs / "xsample-s0" / "run_key.txt").exists()  # never reused as finished


def _python(*argv, env=None):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


def test_start_up_hook_refuses_a_plugin_loss_when_disabled():
    proc = _python("-m", "open_clip_train.main", "--loss", "xsample", "--model", "x",
                   env={"XSAMPLE_OPENCLIP_DISABLE": "1"})
    assert proc.returncode == 2
    assert "python -m xsample_openclip.launch" in proc.stderr and "plain CLIP" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, asked", [
    (["python", "-m", "open_clip_train.main", "--loss", "xsample"], "xsample"),
    (["python", "-m", "open_clip_train.main", "--lr", "1", "--loss=xsample-siglip"], "xsample-siglip"),
    (["python", "-mopen_clip_train.main", "--loss", "xsample"], "xsample"),
    (["python", "/v/bin/torchrun", "--nproc_per_node", "2", "-m", "open_clip_train.main", "--loss", "xsample"],
     "xsample"),
    (["python", "/site-packages/open_clip_train/main.py", "--loss", "xsample"], "xsample"),
    (["python", "-m", "open_clip_train.main", "--loss", "xclr", "--xsample-views", "2"], "xclr"),
    (["python", "-m", "open_clip_train.main", "--loss=my-thirdparty-loss"], "my-thirdparty-loss"),
    (["python", "-m", "open_clip_train.main", "--loss", "clip"], None),
    (["python", "-m", "open_clip_train.main", "--loss-dist-impl", "shift"], None),
    (["python", "-m", "xsample_openclip.launch", "--loss", "xsample"], None),
    (["python", "-m", "pytest", "--loss", "xsample"], None),
])
def test_which_command_lines_the_disabled_hook_refuses(argv, asked):
    assert startup.plugin_loss_asked(argv) == asked


# ------------------------------------------------------------------------------ fault 4: stale runs
def test_an_unchanged_setup_reuses_the_run(tmp_path, data, no_training):
    logs = tmp_path / "logs"
    ckpt = fake_finished_run(logs, XSAMPLE, data, "loss: xsample\n")
    assert runs.train(XSAMPLE, data, SETTINGS, logs) == ckpt
    assert not no_training


def test_a_changed_loss_default_retrains(tmp_path, data, monkeypatch, no_training):
    logs = tmp_path / "logs"
    fake_finished_run(logs, XSAMPLE, data, "loss: xsample\n")
    clip_key = runs.run_key(CLIP, data, SETTINGS, logs)
    add_to = plugins.SoftmaxFlags.add_to

    def new_default(self, parser):
        add_to(self, parser)
        parser.set_defaults(xsample_clip_weight=0.25)

    monkeypatch.setattr(plugins.SoftmaxFlags, "add_to", new_default)
    assert fingerprint.loss_defaults("xsample")["xsample_clip_weight"] == "0.25"
    with pytest.raises(TrainingStarted):
        runs.train(XSAMPLE, data, SETTINGS, logs)
    assert len(no_training) == 1
    assert runs.run_key(CLIP, data, SETTINGS, logs) == clip_key  # CLIP's result does not depend on it


def test_rebuilt_data_at_the_same_path_retrains(tmp_path, monkeypatch):
    root = tmp_path / "shapes"

    def key():
        built = shapes_data.build_shapes_data(root, image_size=32, train_images=64, eval_images=8)
        return runs.run_key(XSAMPLE, runs.TrainData(str(built.train_csv), built.train_num_samples), SETTINGS,
                            tmp_path / "logs")

    first = key()
    assert key() == first  # the cached build, unchanged
    monkeypatch.setattr(shapes_data, "BUILDER_VERSION", shapes_data.BUILDER_VERSION + 1)
    rebuilt = key()
    assert rebuilt != first
    image = sorted((root / "train" / "images").iterdir())[0]
    image.write_bytes(image.read_bytes()[:-1] + b"\0")  # same CSV, one image's content changed
    assert key() != rebuilt


def test_a_missing_image_is_named_before_any_training(tmp_path, data, no_training):
    image = Path(data.csv).parent / "images" / "00003.jpg"
    image.unlink()
    with pytest.raises(FileNotFoundError, match="00003.jpg, which does not exist"):
        runs.train(XSAMPLE, data, SETTINGS, tmp_path / "logs")
    assert not no_training


def test_the_key_covers_pretrained_weights_and_training_code(tmp_path, data, monkeypatch):
    logs = tmp_path / "logs"
    start = tmp_path / "start.pt"
    start.write_bytes(b"a")
    spec = runs.RunSpec("ft-xsample-s0", ("--loss", "xsample"), 0, pretrained=str(start))
    before = runs.run_key(spec, data, SETTINGS, logs)
    start.write_bytes(b"bb")
    assert runs.run_key(spec, data, SETTINGS, logs) != before
    names = {name for name, _ in fingerprint.source_files()}
    assert {"xsample_openclip.losses/softmax.py", "xsample_openclip.targets/flags.py",
            "xsample_openclip.patches/arguments.py", "xsample_openclip.plugins"} <= names
    before = runs.run_key(XSAMPLE, data, SETTINGS, logs)
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "edited")
    assert runs.run_key(XSAMPLE, data, SETTINGS, logs) != before


def test_each_family_trains_at_the_learning_rate_chosen_on_validation():
    from xsample_openclip.demo import cli

    assert cli.parse_args(["--out", "x"]).lr == 2.5e-4
    assert cli.parse_args(["--out", "x", "--family", "sigmoid"]).lr == 5e-4
    assert cli.parse_args(["--out", "x", "--family", "sigmoid", "--lr", "1e-3"]).lr == 1e-3
