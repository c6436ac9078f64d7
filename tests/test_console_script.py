"""The console script ``xsample-openclip-train``: OpenCLIP's own main, patched by the script itself.

With the start-up hook turned off (``XSAMPLE_OPENCLIP_DISABLE=1``) it still trains the plugin's loss, in
one process and under ``torchrun --no-python`` (2 gloo processes); a loss the plugin does not know is
refused by the parser before any step, never read as stock OpenCLIP's ``--loss-dist-impl``.
"""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import cli_runs

SCRIPT = Path(sysconfig.get_paths()["scripts"]) / "xsample-openclip-train"


def _run(cmd, cwd, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", XSAMPLE_OPENCLIP_DISABLE="1")
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _params(run_dir):
    return dict(line.split(": ", 1) for line in (run_dir / "params.txt").read_text().splitlines() if ": " in line)


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    return cli_runs.save_init(tmp_path_factory.mktemp("init") / "init.pt")


def _argv(csv, init, name):
    return [*cli_runs.train_argv(csv, init, 8, epochs=1), "--loss", "xsample", "--xsample-tau-s", "0.1",
            "--name", name]


def test_console_script_trains_xsample_with_the_hook_off(tmp_path, csv_data, init):
    proc = _run([SCRIPT, *_argv(csv_data, init, "one")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "logs" / "one"
    assert _params(run)["loss"] == "xsample" and _params(run)["loss_dist_impl"] == "None"
    assert len(cli_runs.logged_losses(run, "Xsample_loss")) >= 2


def test_console_script_under_torchrun_no_python(tmp_path, csv_data, init):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python"]
    proc = _run([*torchrun, SCRIPT, *_argv(csv_data, init, "two")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    params = _params(tmp_path / "logs" / "two")
    assert (params["loss"], params["world_size"], params["distributed"]) == ("xsample", "2", "True")
    assert len(cli_runs.logged_losses(tmp_path / "logs" / "two", "Xsample_loss")) >= 2


def test_console_script_refuses_an_unknown_loss_before_training(tmp_path, csv_data, init):
    proc = _run([SCRIPT, *cli_runs.train_argv(csv_data, init, 8, epochs=1), "--loss", "nonexistent"], tmp_path)
    assert proc.returncode == 2 and "--loss: invalid choice: 'nonexistent'" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "logs").exists()
