"""``--xsample-tau-s auto`` and ``--resume``: the run's tau_s is kept, recalibrated on request, or refused.

params.txt must never record a self-mass that did not produce the tau_s in use: a resume keeps the run's
tau_s only at the self-mass and global batch it was calibrated at; a resume that changes either, or whose
params.txt cannot be found (a checkpoint outside ``<run>/checkpoints``, ``--remote-sync``), recalibrates
only with ``--resume-allow-loss-changes`` (logged) and is refused otherwise, naming the fixes. Runs go
through ``python -m open_clip_train.main`` (tiny model, 64 captions, CPU); refusals are checked in-process
at start-up (``init_distributed_device``), where main meets them before writing anything.
"""
import re
import shutil

import numpy as np
import pytest
from open_clip_train import distributed, params

from cli_runs import launch, minilm
from xsample_openclip.targets.resume_tau import GIVEN

MODEL = "xs-tiny-vit-32"


def argv(csv, *extra, epochs=1, batch=16):
    return ["--train-data", str(csv), "--dataset-type", "csv", "--model", MODEL, "--batch-size", str(batch),
            "--epochs", str(epochs), "--workers", "0", "--device", "cpu", "--precision", "fp32", "--lr", "1e-3",
            "--warmup", "1", "--seed", "0", "--loss", "xsample", "--xsample-tau-s", "auto", *extra]


def read_params(run):
    return dict(line.split(": ", 1) for line in (run / "params.txt").read_text().splitlines())


def self_mass(captions, tau, batch):
    """Independent reference: the calibration's estimate of the mean self-mass at ``batch`` over all captions,
    mean_i 1 / (1 + (batch - 1) / (m - 1) * sum_{j != i} exp((S_ij - S_ii) / tau)), in numpy."""
    e = minilm(captions).numpy()
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    w = np.exp((s - np.diag(s)[:, None]) / tau)
    np.fill_diagonal(w, 0.0)
    return float(np.mean(1.0 / (1.0 + (batch - 1) / (len(s) - 1) * w.sum(1))))


@pytest.fixture(scope="module")
def base(tmp_path_factory, csv_data):
    """One epoch with auto at self-mass 0.7, global batch 16: its checkpoint and params.txt."""
    cwd = tmp_path_factory.mktemp("auto")
    run, _ = launch(cwd, argv(csv_data), name="base")
    return cwd, run, read_params(run)


def copy_run(base, name):
    cwd, run, _ = base
    shutil.copytree(run, cwd / "logs" / name)
    (cwd / "logs" / name / "out.log").unlink()
    return cwd


def captions(csv):
    import pandas as pd

    return pd.read_csv(csv, sep="\t")["title"].tolist()


def test_the_run_records_the_calibration_that_produced_its_tau_s(base, csv_data):
    _, run, p = base
    tau = float(p["xsample_tau_s"])
    assert p["xsample_self_mass"] == "0.7"
    assert p["xsample_tau_s_calibration"].startswith("auto: self-mass 0.7, global batch 16; 64 captions sampled "
                                                     "uniformly (seed 0) from 64 captions of all 1 source(s)")
    assert self_mass(captions(csv_data), tau, 16) == pytest.approx(0.7, abs=1e-6)


def test_resume_at_the_same_settings_keeps_tau_s(base, csv_data):
    cwd = copy_run(base, "kept")
    run, _ = launch(cwd, argv(csv_data, "--resume", "latest", epochs=2), name="kept")
    log, p = (run / "out.log").read_text(), read_params(run)
    assert f"X-Sample tau_s: {base[2]['xsample_tau_s']}, kept from the run being resumed" in log
    assert "calibrated:" not in log and "(epoch 1)" in log
    assert p["xsample_tau_s"] == base[2]["xsample_tau_s"]
    assert p["xsample_tau_s_calibration"] == base[2]["xsample_tau_s_calibration"]


def test_resume_that_changes_self_mass_recalibrates_with_the_override_and_records_both(base, csv_data):
    cwd = copy_run(base, "remass")
    run, _ = launch(cwd, argv(csv_data, "--resume", "latest", "--xsample-self-mass", "0.5",
                              "--resume-allow-loss-changes", epochs=2), name="remass")
    log, p = (run / "out.log").read_text(), read_params(run)
    old, new = float(base[2]["xsample_tau_s"]), float(p["xsample_tau_s"])
    assert re.search(rf"X-Sample tau_s RECALIBRATED on resume \(--resume-allow-loss-changes\): that run's tau_s "
                     rf"{old!r} was calibrated at self-mass 0.7 and global batch 16, this run has self-mass 0.5 "
                     rf"and global batch 16; from here on the targets use tau_s {new!r}", log)
    assert p["xsample_self_mass"] == "0.5" and p["xsample_tau_s_calibration"].startswith(
        "auto: self-mass 0.5, global batch 16;")
    assert new > old  # a flatter target
    assert self_mass(captions(csv_data), new, 16) == pytest.approx(0.5, abs=1e-6)
    assert f"Loss: xsample (X-Sample contrastive loss): tau_s={new:.6g}" in log  # the loss trains with it


# --- refusals at start-up (in-process: main stops there, before anything is written) ----------------------

def start(cwd, csv, *extra, name):
    args = params.parse_args(argv(csv, f"--logs={cwd / 'logs'}", "--name", name, *extra))
    distributed.init_distributed_device(args)
    return args


def refused(capsys, *a, **kw):
    with pytest.raises(SystemExit) as exc:
        start(*a, **kw)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_resume_at_another_global_batch_is_refused_with_both_fixes(base, csv_data, capsys):
    cwd, run, p = base
    err = refused(capsys, cwd, csv_data, "--resume", "latest", "--batch-size", "8", name="base")
    assert (f"that run's tau_s {p['xsample_tau_s']} was calibrated at self-mass 0.7 and global batch 16, this run "
            "has self-mass 0.7 and global batch 8") in err
    assert f"--xsample-tau-s {p['xsample_tau_s']}" in err and "--resume-allow-loss-changes" in err
    args = start(cwd, csv_data, "--resume", "latest", "--batch-size", "8", "--resume-allow-loss-changes", name="base")
    assert args.xsample_tau_s != float(p["xsample_tau_s"])
    assert args.xsample_tau_s_calibration.startswith("auto: self-mass 0.7, global batch 8;")
    args = start(cwd, csv_data, "--resume", "latest", "--batch-size", "8", "--xsample-tau-s", p["xsample_tau_s"],
                 name="base")
    assert args.xsample_tau_s == float(p["xsample_tau_s"])
    assert args.xsample_tau_s_calibration.startswith("given with --xsample-tau-s")


def test_resume_from_a_checkpoint_outside_its_run_is_refused_naming_the_old_value(base, csv_data, tmp_path, capsys):
    cwd, run, p = base
    moved = tmp_path / "kept" / "model.pt"
    moved.parent.mkdir()
    shutil.copy(run / "checkpoints" / "epoch_1.pt", moved)
    err = refused(capsys, cwd, csv_data, "--resume", str(moved), name="elsewhere")
    assert f"{moved} is not in a <run>/checkpoints folder next to that run's params.txt" in err
    assert "--xsample-tau-s VALUE" in err and "--resume-allow-loss-changes" in err
    shutil.copy(run / "params.txt", moved.parent / "params.txt")
    err = refused(capsys, cwd, csv_data, "--resume", str(moved), name="elsewhere")
    assert f"records xsample_tau_s: {p['xsample_tau_s']}; if that is the run, pass --xsample-tau-s " \
           f"{p['xsample_tau_s']}" in err
    args = start(cwd, csv_data, "--resume", str(moved), "--resume-allow-loss-changes", name="elsewhere")
    notes = "\n".join(args.loss_run.notes)
    assert "X-Sample tau_s RECALIBRATED on resume" in notes and "cannot be read" in notes
    # same data, seed and batch: the recalibration reproduces the run's value
    assert args.xsample_tau_s == float(p["xsample_tau_s"])


def test_resume_latest_with_remote_sync_is_refused(base, csv_data, capsys):
    cwd, _, _ = base
    err = refused(capsys, cwd, csv_data, "--resume", "latest", "--remote-sync", "s3://bucket/runs", name="base")
    assert "with --remote-sync, --resume latest loads the newest checkpoint under s3://bucket/runs/base" in err
    assert "--resume-allow-loss-changes" in err


def test_a_fresh_start_and_a_run_given_tau_s_still_calibrate_or_keep_without_a_flag(base, csv_data):
    cwd, _, p = base
    args = start(cwd, csv_data, "--resume", "latest", name="fresh")  # no checkpoint: OpenCLIP starts afresh
    assert args.xsample_tau_s == float(p["xsample_tau_s"])
    assert "X-Sample tau_s calibrated" in "\n".join(args.loss_run.notes)


def test_auto_after_a_run_that_was_given_tau_s_keeps_it_and_its_record(base, csv_data):
    """A number given in that run claims no self-mass, so keeping it records nothing false."""
    cwd = copy_run(base, "given")
    params_file = cwd / "logs" / "given" / "params.txt"
    text = re.sub(r"xsample_tau_s: .*", "xsample_tau_s: 0.2", params_file.read_text())
    text = re.sub(r"xsample_tau_s_calibration: .*", f"xsample_tau_s_calibration: {GIVEN}", text)
    params_file.write_text(text)
    args = start(cwd, csv_data, "--resume", "latest", "--batch-size", "8", name="given")
    assert args.xsample_tau_s == 0.2 and args.xsample_tau_s_calibration == GIVEN
    assert "X-Sample tau_s: 0.2, kept from the run being resumed (given with --xsample-tau-s" in "\n".join(
        args.loss_run.notes)
