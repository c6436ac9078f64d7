"""``--xsample-graph-centre`` in a run: statistics from the calibration sample, recorded (params.txt digest +
the run's ``xsample_graph_statistics.pt``), ``auto`` calibrated on the centred top-k graph, and a resume that
reuses them or is refused. One tiny one-epoch run (CPU); refusals are checked in-process at start-up."""
import shutil

import numpy as np
import pytest
import torch
from open_clip_train import distributed, params

from cli_runs import launch, minilm
from test_resume_auto import argv, captions, read_params
from xsample_openclip.targets import calibrate
from xsample_openclip.targets.graph_options import STATS_FILE, GraphStatistics

GRAPH = ("--xsample-graph-centre", "--xsample-graph-topk", "4")


@pytest.fixture(scope="module")
def centred(tmp_path_factory, csv_data):
    cwd = tmp_path_factory.mktemp("graph")
    run, proc = launch(cwd, argv(csv_data, *GRAPH), name="centred")
    return cwd, run, read_params(run), proc


def start(cwd, csv, *extra, name):
    args = params.parse_args(argv(csv, f"--logs={cwd / 'logs'}", "--name", name, *extra))
    distributed.init_distributed_device(args)
    return args


def test_the_run_records_statistics_of_its_captions_and_calibrates_on_the_graph_used(centred, csv_data):
    cwd, run, p, _ = centred
    stats = GraphStatistics.load(run / STATS_FILE)
    assert p["xsample_graph_statistics"].startswith(f"sha256:{stats.digest} (centre; 64 captions sampled")
    e = minilm(captions(csv_data)).numpy()      # the data's 64 captions are the whole calibration sample
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(stats.mean.numpy(), e.mean(0), atol=1e-5)
    x = e - e.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tau = float(p["xsample_tau_s"])
    sims = calibrate.topk_similarities(torch.from_numpy(x @ x.T), 4, 16)
    assert abs(calibrate.target_stats(sims, tau, 16)["self_mass"] - 0.7) < 1e-3
    plain = calibrate.tau_for_self_mass(torch.from_numpy(e @ e.T), 0.7, 16)
    assert abs(plain - tau) / tau > 0.05    # not the tau_s of the uncentred, uncut graph


def test_resume_reuses_the_recorded_statistics(centred, csv_data):
    cwd, run, p, _ = centred
    args = start(cwd, csv_data, *GRAPH, "--resume", "latest", name="centred")
    assert args.xsample_graph_statistics.digest == GraphStatistics.load(run / STATS_FILE).digest
    assert args.xsample_tau_s == float(p["xsample_tau_s"])


def test_resume_without_the_file_is_refused_or_recomputed_on_request(centred, csv_data, capsys):
    cwd, run, p, _ = centred
    shutil.copytree(run, cwd / "logs" / "lost")
    (cwd / "logs" / "lost" / "out.log").unlink()
    (cwd / "logs" / "lost" / STATS_FILE).unlink()
    with pytest.raises(SystemExit) as exc:
        start(cwd, csv_data, *GRAPH, "--resume", "latest", name="lost")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{STATS_FILE} is missing" in err and "--resume-allow-loss-changes" in err
    args = start(cwd, csv_data, *GRAPH, "--resume", "latest", "--resume-allow-loss-changes", name="lost")
    assert str(args.xsample_graph_statistics).startswith("sha256:")


def test_resume_that_drops_the_centring_is_refused(centred, csv_data, capsys):
    cwd, run, p, _ = centred
    with pytest.raises(SystemExit):
        start(cwd, csv_data, "--xsample-graph-topk", "4", "--resume", "latest", name="centred")
    assert "--xsample-graph-centre: True in that run, False now" in capsys.readouterr().err


def test_the_clip_weight_schedule_sets_each_epochs_weight_in_a_run(tmp_path, csv_data):
    run, _ = launch(tmp_path, argv(csv_data, "--xsample-clip-weight", "0.4", "--xsample-clip-weight-schedule",
                                   "linear-down", epochs=2), name="schedule")
    log = (run / "out.log").read_text()
    assert "X-Sample clip weight for epoch 0: 0.4 (linear-down from 0.4 over 2 epochs)" in log
    assert "X-Sample clip weight for epoch 1: 0 (linear-down" in log
    assert read_params(run)["xsample_clip_weight_schedule"] == "linear-down"
