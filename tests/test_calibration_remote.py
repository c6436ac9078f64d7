"""``--xsample-tau-s auto`` on streamed training data, and ``--xsample-calibration-data`` in its place.

Shards are streamed the way OpenCLIP's webdataset loader streams them (webdataset's gopen): through
``pipe:cat`` and from an HTTP server on the loopback address (``http.server`` in a thread, random port,
shut down after the module and by a timer in any case; gopen reads it with curl). The sample, and so
tau_s, must be exactly the one the same shards give as local paths; a stream that fails or stalls must
stop the start-up with a refusal naming both ways out, never give a smaller sample.

The data and the start-up path are tests/test_calibration_sample.py's (4 topics of 1,024 captions, a
bag-of-words table, rank 0's checks as ``init_distributed_device`` runs them); the end-to-end run at the
end trains the tiny model through ``open_clip_train.main`` on ``pipe:`` shards.
"""
import functools
import http.server
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from open_clip_train import distributed, params
from test_calibration_sample import BATCH, MODEL, SELF_MASS, calibrate, data, topic_captions  # noqa: F401 - fixture

from xsample_openclip.data import writers
from xsample_openclip.targets.sampling import sample_uniform
from xsample_openclip.targets.sources import StreamError, iter_captions

#: The test server stops by itself after this long, whatever the tests do.
SERVER_SECONDS = 300


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(data):
    """``http://127.0.0.1:PORT/`` serving the folder of the topic shards and ``many/`` (16 shards of 256)."""
    root = os.path.dirname(data["wds"])
    caps = topic_captions()
    writers.write_webdataset(os.path.join(root, "many"), [(f"{i:05d}", b"x", c) for i, c in enumerate(caps)], 256)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    stop = threading.Timer(SERVER_SECONDS, httpd.shutdown)
    no_proxy = {k: os.environ.get(k) for k in ("NO_PROXY", "no_proxy")}
    os.environ.update(NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")  # curl must not send loopback to a proxy
    thread.start()
    stop.start()
    try:
        yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "root": root}
    finally:
        stop.cancel()
        httpd.shutdown()
        httpd.server_close()
        for k, v in no_proxy.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _local(data):
    return [os.path.join(os.path.dirname(data["wds"]), f"00000{i}.tar") for i in range(2)]


def test_pipe_and_http_shards_calibrate_exactly_like_the_same_shards_as_paths(data, server, tmp_path):
    local = _local(data)
    assert [os.path.exists(p) for p in local] == [True, True]
    streamed = {"pipe": "::".join(f"pipe:cat {p}" for p in local),
                "http": server["url"] + "/{000000..000001}.tar"}
    for seed in (0, 1):
        tau, note = calibrate(tmp_path, data, data["wds"], seed)
        assert "streamed" not in note
        for name, train_data in streamed.items():
            tau_streamed, note_streamed = calibrate(tmp_path, data, train_data, seed, "--dataset-type", "webdataset")
            assert tau_streamed == tau, (name, seed, tau_streamed, tau)
            assert (f"2048 captions sampled uniformly (seed {seed}) from 4096 captions of all 2 source(s) "
                    "(2 streamed through webdataset's gopen)") in note_streamed


def test_beyond_max_sources_the_same_shards_are_sampled_streamed_or_local(data, server):
    root, pattern = server["root"], "{000000..000015}.tar"
    local = sample_uniform(os.path.join(root, "many", pattern), 500, seed=1, max_sources=4)
    http = sample_uniform(f"{server['url']}/many/{pattern}", 500, seed=1, dataset_type="webdataset", max_sources=4)
    assert local.sources_read == http.sources_read == 4 and local.population == http.population == 4 * 256
    assert http.captions == local.captions
    assert "a seeded sample of 4 of 16 source(s), each read in full (4 streamed" in http.describe()


def test_calibration_data_replaces_reading_the_training_data(data, tmp_path):
    unreachable = "http://127.0.0.1:9/shards/{000000..000001}.tar"  # port 9 (discard): connection refused
    tau_csv, _ = calibrate(tmp_path, data, data["shuffled"], 0)
    tau, note = calibrate(tmp_path, data, unreachable, 0, "--dataset-type", "webdataset",
                          "--xsample-calibration-data", data["shuffled"])
    assert tau == tau_csv
    assert note.endswith(f"from --xsample-calibration-data {data['shuffled']}; 4096 captions read)")
    # a shard as calibration data for a CSV run: that shard's tau_s (topics 0-1 only), not the CSV's
    shard = _local(data)[0]
    tau_shard = calibrate(tmp_path, data, shard, 2)[0]
    assert calibrate(tmp_path, data, data["sorted"], 2, "--xsample-calibration-data", shard)[0] == tau_shard
    assert abs(tau_shard - calibrate(tmp_path, data, data["sorted"], 2)[0]) > 0.005


def _refusal(tmp_path, data, capsys, train_data, *extra):
    with pytest.raises(SystemExit) as exit_info:
        calibrate(tmp_path, data, train_data, 0, "--dataset-type", "webdataset", *extra)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


WAYS_OUT = ("pass a number instead (e.g. --xsample-tau-s 0.1), or calibrate on a local copy of captions like "
            "these with --xsample-calibration-data PATH")


def test_a_source_that_cannot_be_read_is_refused_naming_both_ways_out(data, server, tmp_path, capsys):
    cases = {
        "http://127.0.0.1:9/{000000..000001}.tar": r"http://127.0.0.1:9/000000.tar: its command `curl .*` exited "
                                                   r"with status 7",
        # one shard of three is missing on the server: a refusal, not a sample of the other two
        server["url"] + "/{000000..000002}.tar": r"/000002.tar: its command `curl .*` exited with status 22",
        "s3://bucket/{0..1}.tar": r"no gopen handler defined.*'pipe:aws s3 cp URL -'",
        "pipe:cat /nowhere/a.tar": r"pipe:cat /nowhere/a.tar: its command `cat /nowhere/a.tar` exited with status 1",
    }
    for train_data, why in cases.items():
        err = _refusal(tmp_path, data, capsys, train_data)
        assert re.search(r"--xsample-tau-s auto could not read the training captions of --train-data ", err), err
        assert re.search(why, err), err
        assert WAYS_OUT in " ".join(err.split()), err
    err = _refusal(tmp_path, data, capsys, data["wds"], "--xsample-calibration-data", "pipe:cat /nowhere/a.tar")
    assert "of --xsample-calibration-data pipe:cat /nowhere/a.tar" in err and "fix --xsample-calibration-data" in err
    err = _refusal(tmp_path, data, capsys, data["wds"], "--xsample-calibration-data", "/nowhere/{0..3}.tar")
    assert "fewer than 2 could be read from --xsample-calibration-data /nowhere/{0..3}.tar" in err
    assert "4 missing source(s) not read" in err


def test_a_stalled_stream_ends_at_the_time_bound(data):
    shard = _local(data)[0]
    start = time.monotonic()
    with pytest.raises(StreamError, match="not read in full within the time allowed"):
        sample_uniform(f"pipe:sleep 30; cat {shard}", 100, seed=0, dataset_type="webdataset", read_seconds=1)
    assert time.monotonic() - start < 10


def test_precompute_reads_streams_with_the_same_reader(data, server):
    """Tables are built by the same reader: streamed shards give the local shards' captions, in order;
    a stream that fails raises instead of leaving its captions out of the table."""
    local = list(iter_captions(data["wds"]))
    assert len(local) == 4096
    assert list(iter_captions(server["url"] + "/{000000..000001}.tar", "webdataset")) == local
    with pytest.raises(StreamError, match="exited with status 22"):
        list(iter_captions(server["url"] + "/{000000..000002}.tar", "webdataset"))


def test_calibration_data_with_a_given_tau_is_refused_as_unused(tmp_path, data, capsys):
    with pytest.raises(SystemExit):  # at argument parsing, on every rank
        params.parse_args(["--train-data", data["wds"], "--model", MODEL, "--loss", "xsample", "--xsample-tau-s",
                           "0.1", "--xsample-calibration-data", data["sorted"], "--logs", str(tmp_path)])
    assert "with --xsample-tau-s 0.1 it is unused: drop it" in capsys.readouterr().err


def test_training_through_main_on_pipe_shards_calibrates_like_local_paths(tmp_path, wds_data):
    """A tiny run through ``open_clip_train.main`` on ``pipe:cat`` shards (online encoder, 2 steps): its
    params.txt holds the tau_s the same shards give as paths at the same start-up; an unreachable URL
    stops before step 0 with the refusal."""
    folder = os.path.dirname(wds_data)
    pipes = "::".join(f"pipe:cat {folder}/00000{i}.tar" for i in range(2))
    common = ["--model", MODEL, "--loss", "xsample", "--batch-size", "16", "--seed", "0", "--device", "cpu"]
    argv = ["--train-data", pipes, "--dataset-type", "webdataset", "--train-num-samples", "32", *common,
            "--epochs", "1", "--workers", "0", "--precision", "fp32", "--lr", "1e-3", "--warmup", "1",
            "--log-every-n-steps", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "open_clip_train.main", *argv, "--name", "pipe"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    logged = dict(line.split(": ", 1) for line in (tmp_path / "logs" / "pipe" / "params.txt").read_text().splitlines())
    reference = params.parse_args(["--train-data", wds_data, "--dataset-type", "webdataset", *common,
                                   "--logs", str(tmp_path / "reference")])
    distributed.init_distributed_device(reference)
    assert float(logged["xsample_tau_s"]) == reference.xsample_tau_s
    assert "from 64 captions of all 2 source(s) (2 streamed through webdataset's gopen)" in \
        logged["xsample_tau_s_calibration"]
    log = (tmp_path / "logs" / "pipe" / "out.log").read_text()
    assert f"X-Sample tau_s calibrated: {reference.xsample_tau_s:.6g}" in log
    assert len(re.findall(r"Train Epoch: 0 \[", log)) >= 2  # it trained
    assert logged["xsample_calibration_data"] == "None"

    # resume: calibration data follows the tau_s rules (kept at the same self-mass and batch, unused;
    # read when a recalibration is asked for)
    def resume(*extra):
        args = params.parse_args([*argv, "--logs", str(tmp_path / "logs"), "--name", "pipe", "--resume", "latest",
                                  "--xsample-calibration-data", wds_data, *extra])
        distributed.init_distributed_device(args)
        return args, " ".join(args.loss_run.notes)

    args, notes = resume()
    assert args.xsample_tau_s == reference.xsample_tau_s
    assert f"kept from the run being resumed ({logged['xsample_tau_s_calibration']}); --xsample-calibration-data " \
           f"{wds_data} unused" in notes
    args, notes = resume("--batch-size", "8", "--resume-allow-loss-changes")
    assert "RECALIBRATED on resume" in notes and f"from --xsample-calibration-data {wds_data}" in notes
    assert args.xsample_tau_s_calibration.startswith("auto: self-mass 0.7, global batch 8;")

    refused = subprocess.run([sys.executable, "-m", "open_clip_train.main", *argv, "--name", "refused",
                              "--train-data", "http://127.0.0.1:9/{000000..000001}.tar"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert "--xsample-calibration-data PATH" in refused.stderr and "--xsample-tau-s 0.1" in refused.stderr
    assert not (tmp_path / "logs" / "refused" / "out.log").exists() or \
        "Train Epoch" not in (tmp_path / "logs" / "refused" / "out.log").read_text()
