"""End to end through OpenCLIP's real CLI in a subprocess: tiny model, tiny CSV and webdataset data."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

MODEL = "xs-tiny-vit-32"


def train(tmp_path, data_args, *extra, entry=("-m", "open_clip_train.main"), name="run", launcher=None):
    cmd = [*(launcher or [sys.executable]), *entry, *data_args, "--model", MODEL, "--batch-size", "16",
           "--epochs", "3", "--workers", "0", "--device", "cpu", "--precision", "fp32", "--lr", "2e-3",
           "--warmup", "2", "--wd", "0.1", "--log-every-n-steps", "1", "--name", name,
           "--seed", "0", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path / "logs" / name  # the default --logs, relative to cwd (torchrun rejects --logs)


def step_losses(run_dir, key="Xsample_loss"):
    log = (run_dir / "out.log").read_text()
    return [float(v) for v in re.findall(rf"{key}: ([0-9.]+) \(", log)]


def params(run_dir):
    return dict(line.split(": ", 1) for line in (run_dir / "params.txt").read_text().splitlines())


def csv_args(path):
    return ["--train-data", str(path), "--dataset-type", "csv"]


def wds_args(pattern):
    return ["--train-data", pattern, "--dataset-type", "webdataset", "--train-num-samples", "64"]


def assert_trained_xsample(run_dir, epochs=3):
    assert params(run_dir)["loss"] == "xsample"
    assert "Loss: xsample (X-Sample contrastive loss)" in (run_dir / "out.log").read_text()
    losses = step_losses(run_dir)
    assert len(losses) >= 6, losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    ckpt = run_dir / "checkpoints" / f"epoch_{epochs}.pt"
    assert set(torch.load(ckpt, weights_only=True)) == {"epoch", "name", "state_dict", "optimizer"}
    model, _, _ = open_clip.create_model_and_transforms(MODEL, pretrained=str(ckpt))  # strict load


@pytest.mark.install_smoke
def test_csv_run_trains_xsample_and_saves_a_stock_checkpoint(tmp_path, csv_data):
    assert_trained_xsample(train(tmp_path, csv_args(csv_data), "--loss", "xsample"))


def test_webdataset_run_with_gradient_accumulation(tmp_path, wds_data):
    run = train(tmp_path, wds_args(wds_data), "--loss", "xsample", "--accum-freq", "2",
                "--batch-size", "8", "--xsample-clip-weight", "0.2", "--xsample-image-weight", "0.5")
    assert_trained_xsample(run)
    assert "Xsample_image_loss" in (run / "out.log").read_text()


def test_hook_free_entry_module(tmp_path, csv_data):
    assert_trained_xsample(train(tmp_path, csv_args(csv_data), "--loss", "xsample",
                                 entry=("-m", "xsample_openclip.launch")))


def test_torchrun_launch(tmp_path, csv_data):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1"]
    assert_trained_xsample(train(tmp_path, csv_args(csv_data), "--loss", "xsample", launcher=torchrun,
                                 entry=("-m", "open_clip_train.main")))


def test_precomputed_table_run(tmp_path, csv_data):
    table = tmp_path / "table"
    subprocess.run([sys.executable, "-m", "xsample_openclip.precompute", "--model", MODEL,
                    "--train-data", str(csv_data), "--out", str(table)], check=True, timeout=300,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    run = train(tmp_path, csv_args(csv_data), "--loss", "xsample", "--xsample-embeddings", str(table))
    assert_trained_xsample(run)
    assert f"caption targets from table {table}" in (run / "out.log").read_text()


def test_default_loss_is_stock_clip(tmp_path, csv_data):
    run = train(tmp_path, csv_args(csv_data), "--epochs", "1")
    assert params(run)["loss"] == "clip"
    assert "Loss: clip (OpenCLIP's own selection): ClipLoss" in (run / "out.log").read_text()
    assert step_losses(run, "Contrastive_loss")


# --- numbers, not only log strings: the first logged loss against the formula ----------------------

import cli_runs as cr  # noqa: E402
import tiny_data  # noqa: E402

SIGLIP_MODEL = "xs-tiny-sigmoid-32"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("numeric")
    csv = tiny_data.write_csv(root / "data", n=16)
    return root, csv


@pytest.mark.parametrize("loss", ["siglip", "xsample-siglip"])
def test_sigmoid_runs_log_the_sigmoid_formula(small, loss):
    root, csv = small
    init = cr.save_init(root / f"init-{loss}.pt", model=SIGLIP_MODEL)
    flags = ["--loss", "clip", "--siglip"] if loss == "siglip" else ["--loss", "xsample-siglip", "--xsample-tau-s", "0.1"]
    run, _ = cr.launch(root, cr.train_argv(csv, init, 16, *flags, model=SIGLIP_MODEL, epochs=1), name=loss)
    img, txt, scale, captions, bias = cr.features(init, csv, model=SIGLIP_MODEL, bias=True)
    if loss == "siglip":
        expected = cr.sigmoid_loss(img, txt, scale, bias)
    else:
        expected = cr.sigmoid_loss(img, txt, scale, bias, cr.minilm(captions), 0.1)
        assert expected != pytest.approx(cr.sigmoid_loss(img, txt, scale, bias), rel=1e-3)  # soft targets matter
        assert "Loss: xsample-siglip (X-Sample sigmoid loss): tau_s=0.1, target=kernel" in (run / "out.log").read_text()
    assert cr.logged_losses(run)[0] == pytest.approx(expected, rel=2e-4)


@pytest.mark.openclip_compat
def test_validation_reports_the_training_objective_too(small):
    root, csv = small
    init = cr.save_init(root / "init-val.pt")
    run, _ = cr.launch(root, cr.train_argv(csv, init, 16, "--loss", "xsample", "--xsample-tau-s", "0.2",
                                           "--val-data", str(csv), epochs=1), name="val")
    results = [json.loads(line) for line in (run / "checkpoints" / "results.jsonl").read_text().splitlines()]
    assert "Eval Epoch: 1" in (run / "out.log").read_text() and "xsample_val_loss" in (run / "out.log").read_text()
    final = str(run / "checkpoints" / "epoch_1.pt")
    img, txt, scale, captions = cr.features(final, csv, train=False)
    expected = cr.xsample_loss(img, txt, scale, cr.minilm(captions), 0.2, clip_weight=cr.DEFAULT_CLIP_WEIGHT)
    assert results[-1]["xsample_val_loss"] == pytest.approx(expected, rel=1e-4)
    assert results[-1]["clip_val_loss"] == pytest.approx(cr.clip_loss(img, txt, scale), rel=1e-4)


def test_auto_tau_is_calibrated_recorded_and_kept_on_resume(small):
    from xsample_openclip.losses.graph import softmax_targets

    root, csv = small
    init = cr.save_init(root / "init-auto.pt")
    argv = cr.train_argv(csv, init, 16, "--loss", "xsample", "--xsample-tau-s", "auto", "--xsample-self-mass", "0.5",
                         "--save-most-recent", epochs=1)
    run, _ = cr.launch(root, argv, name="auto")
    tau = float(params(run)["xsample_tau_s"])
    assert "X-Sample tau_s calibrated" in (run / "out.log").read_text()
    # the whole data set is one batch here, so the calibrated targets must put exactly half on the diagonal
    _, _, _, captions = cr.features(init, csv)
    emb = cr.minilm(captions)
    assert float(softmax_targets(emb, emb, tau).diagonal().mean()) == pytest.approx(0.5, abs=1e-4)
    resumed, _ = cr.launch(root, [*argv[:argv.index("--epochs") + 1], "2", *argv[argv.index("--epochs") + 2:],
                                  "--resume", "latest"], name="auto")
    assert float(params(resumed)["xsample_tau_s"]) == tau
    assert "kept from the run being resumed" in (resumed / "out.log").read_text()
