"""Several processes through OpenCLIP's own ``main`` (torchrun, gloo, CPU), checked against one process
and against float64 computations written from the formulas.

The data has 16 samples; one process trains with batch 16, two with batch 8 each, so every step's
global batch is the whole data set in both. Checked:
- the first loss each run logs (rank 0's) equals the formula on the saved initial weights: the full
  batch without ``--local-loss``, rank 0's rows (``DistributedSampler``'s) with it; for ``--loss clip``
  and ``--loss xsample``, online encoder and precomputed table, in all four local-loss /
  gather-with-grad modes;
- the weights after 3 steps (both runs moved: ``cr.MIN_UPDATE``) equal the one-process run's wherever
  OpenCLIP's gradient is the single-process gradient (``--gather-with-grad``); without it OpenCLIP averages gradients that flow
  through each rank's own features only, so there X-Sample at tau_s -> 0 must equal ``--loss clip``
  under the same launch (the same distributed semantics as ClipLoss);
- ``--accum-freq 2`` with 2 processes equals one process with ``--accum-freq 2`` (weights), and both
  first losses equal the formula on the whole data set (each step's accumulated global batch);
- ``--xsample-tau-s auto`` with 2 processes x batch 8 x ``--accum-freq 2`` on 32 samples: the tau_s
  both ranks use gives the asked self-mass at the global batch 32, recomputed here from all 32 captions;
- only rank 0 writes out.log, params.txt and checkpoints;
- a 2-process run killed mid-epoch resumes with ``--resume latest``;
- refusals found by rank 0 at start-up (a table that misses captions, a resume that changes the loss)
  stop every rank promptly with the message, none left waiting.
"""
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cli_runs as cr
import tiny_data

MODES = list(itertools.product([False, True], [False, True]))  # (local_loss, gather_with_grad)
N = 16
XS = ("--loss", "xsample", "--xsample-tau-s", "0.2")
#: Relative difference of two runs' weight updates after 3 steps (SGD with momentum) that still counts as
#: equal: float32 rounding gives ~3e-5 (stock ClipLoss, 2 processes with --gather-with-grad vs one); a
#: gradient with other semantics (stock ClipLoss, --local-loss without --gather-with-grad) gives ~1.2.
SAME_UPDATE = 1e-3


def mode_flags(local_loss, gather_with_grad):
    return [f for f, on in (("--local-loss", local_loss), ("--gather-with-grad", gather_with_grad)) if on]


def mode_id(mode):
    return f"local{int(mode[0])}-gwg{int(mode[1])}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    csv = tiny_data.write_csv(root / "data", n=N)
    init = cr.save_init(root / "init.pt")
    table = root / "table"
    subprocess.run([sys.executable, "-m", "xsample_openclip.precompute", "--model", cr.MODEL, "--train-data",
                    str(csv), "--out", str(table), "--dtype", "float32"], check=True, timeout=300,
                   env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"), capture_output=True)
    img, txt, scale, captions = cr.features(init, csv)
    return {"root": root, "csv": csv, "init": init, "table": str(table), "img": img, "txt": txt,
            "scale": scale, "captions": cr.minilm(captions)}


def source_flags(setup, source):
    return ["--xsample-embeddings", setup["table"]] if source == "table" else []


def run(setup, name, nproc, batch, *extra, check=True, env=None):
    cwd = setup["root"] / name
    cwd.mkdir(exist_ok=True)
    return cr.launch(cwd, cr.train_argv(setup["csv"], setup["init"], batch, *extra), nproc=nproc, check=check,
                     env=env)


@pytest.fixture(scope="module")
def single(setup):
    """One process, batch 16: --loss clip, and --loss xsample with each caption source."""
    runs = {"clip": run(setup, "one-clip", 1, N, "--loss", "clip")[0]}
    for source in ("online", "table"):
        runs[source] = run(setup, f"one-{source}", 1, N, *XS, *source_flags(setup, source))[0]
    return runs


def reference(setup, loss, rows=None):
    if loss == "clip":
        return cr.clip_loss(setup["img"], setup["txt"], setup["scale"], rows)
    return cr.xsample_loss(setup["img"], setup["txt"], setup["scale"], setup["captions"], 0.2, rows,
                           clip_weight=cr.DEFAULT_CLIP_WEIGHT)  # the package default: no --xsample-clip-weight in XS


@pytest.mark.openclip_compat
@pytest.mark.parametrize("loss", ["clip", "online", "table"])
def test_one_process_first_loss_is_the_formula(setup, single, loss):
    first = cr.logged_losses(single[loss])[0]
    assert first == pytest.approx(reference(setup, "clip" if loss == "clip" else "xsample"), rel=2e-4)


@pytest.mark.openclip_compat
@pytest.mark.parametrize("source", ["online", "table"])
@pytest.mark.parametrize("mode", MODES, ids=mode_id)
def test_two_processes_match_one(setup, single, mode, source):
    run_dir, proc = run(setup, f"two-{source}-{mode_id(mode)}", 2, N // 2, *XS, *source_flags(setup, source),
                        *mode_flags(*mode))
    rows = cr.rank_rows(N, 2, 0) if mode[0] else None
    assert cr.logged_losses(run_dir)[0] == pytest.approx(reference(setup, "xsample", rows), rel=2e-4)
    if mode[1]:  # --gather-with-grad: OpenCLIP's gradient is the single-process one
        assert cr.update_difference(cr.weights(run_dir, 3), cr.weights(single[source], 3), setup["init"]) < SAME_UPDATE
    assert "CPU distributed training (2 processes, backend gloo)" in (run_dir / "out.log").read_text()
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "out.log", "params.txt"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"epoch_{e}.pt" for e in (1, 2, 3)]
    assert cr.weights(run_dir, 3).keys() == cr.weights(single[source], 3).keys()  # checkpoint of the bare model


@pytest.mark.parametrize("mode", [(False, False), (True, False)], ids=mode_id)
def test_without_gather_with_grad_xsample_has_clip_loss_semantics(setup, mode):
    """tau_s -> 0 with distinct captions makes X-Sample's target CLIP's: both 2-process runs must agree."""
    clip_dir, _ = run(setup, f"two-clip-{mode_id(mode)}", 2, N // 2, "--loss", "clip", *mode_flags(*mode))
    xs_dir, _ = run(setup, f"two-xs0-{mode_id(mode)}", 2, N // 2, "--loss", "xsample", "--xsample-tau-s", "1e-4",
                    *mode_flags(*mode))
    rows = cr.rank_rows(N, 2, 0) if mode[0] else None
    assert cr.logged_losses(clip_dir)[0] == pytest.approx(reference(setup, "clip", rows), rel=2e-4)
    assert cr.logged_losses(xs_dir) == pytest.approx(cr.logged_losses(clip_dir), rel=2e-4)
    assert cr.update_difference(cr.weights(xs_dir, 3), cr.weights(clip_dir, 3), setup["init"]) < SAME_UPDATE


def test_gradient_accumulation_with_two_processes(setup):
    """Both runs' step is the whole data set (1 x 8 x 2, 2 x 4 x 2): the loss OpenCLIP logs for the last
    micro-batch is over the whole accumulated global batch, so it is the formula on all 16 samples."""
    one, _ = run(setup, "accum-one", 1, N // 2, *XS, "--accum-freq", "2")
    two, _ = run(setup, "accum-two", 2, N // 4, *XS, "--accum-freq", "2", "--gather-with-grad")
    assert cr.logged_losses(one)[0] == pytest.approx(reference(setup, "xsample"), rel=2e-4)
    assert cr.logged_losses(two)[0] == pytest.approx(reference(setup, "xsample"), rel=2e-4)
    assert cr.update_difference(cr.weights(two, 3), cr.weights(one, 3), setup["init"]) < SAME_UPDATE


@pytest.mark.openclip_compat
def test_two_process_run_killed_mid_epoch_resumes(setup):
    cwd = setup["root"] / "killed"
    cwd.mkdir()
    argv = cr.train_argv(setup["csv"], setup["init"], N // 4, *XS, "--save-most-recent", epochs=3)
    fault = json.dumps({"kill_at": [1, 1]})  # epoch 1, second batch: epoch_1.pt exists
    runner = os.path.join(os.path.dirname(__file__), "fault_runner.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", runner,
           *argv, "--name", "run"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", XSAMPLE_TEST_FAULT=fault)
    killed = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0
    checkpoints = cwd / "logs" / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_1.pt", "epoch_latest.pt"]
    resumed, _ = cr.launch(cwd, [*argv, "--resume", "latest"], nproc=2)
    log = (resumed / "out.log").read_text()
    assert "=> resuming checkpoint" in log and "Train Epoch: 2" in log
    assert log.count("Loss: xsample (X-Sample contrastive loss): tau_s=0.2") == 2  # both launches
    assert cr.weights(resumed, 3)


def refused_quickly(setup, name, *extra, cwd=None):
    started = time.monotonic()
    run_dir, proc = run(setup, name, 2, N // 2, *extra, check=False)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert elapsed < 120, f"took {elapsed:.0f} s: a rank waited"
    return proc.stdout + proc.stderr


def test_rank_zero_table_refusal_stops_every_rank(setup, tmp_path):
    from open_clip import get_tokenizer

    from xsample_openclip.precompute import build_table
    from xsample_openclip.targets.encoders import SentenceEncoder
    from xsample_openclip.targets.sources import iter_captions

    half = build_table(tmp_path / "half", iter(list(iter_captions(str(setup["csv"])))[:8]),
                       get_tokenizer(cr.MODEL), SentenceEncoder("minilm"), cr.MODEL)
    out = refused_quickly(setup, "refused-table", *XS, "--xsample-embeddings", str(half.path))
    assert "is missing 8 of the 16 distinct captions" in out
    assert "rank 1: stopping with rank 0, which found: --xsample-embeddings" in out
    assert not (setup["root"] / "refused-table" / "logs").exists()


@pytest.mark.openclip_compat
def test_rank_zero_resume_refusal_stops_every_rank(setup, single):
    cwd = setup["root"] / "resume-refused"
    cwd.mkdir()
    (cwd / "logs").symlink_to(single["online"].parent, target_is_directory=True)
    argv = cr.train_argv(setup["csv"], setup["init"], N // 2, "--loss", "clip", "--resume", "latest")
    started = time.monotonic()
    _, proc = cr.launch(cwd, argv, nproc=2, name=single["online"].name, check=False)
    assert proc.returncode != 0 and time.monotonic() - started < 120
    out = proc.stdout + proc.stderr
    assert "--loss: xsample in that run, clip now" in out and "rank 1: stopping with rank 0" in out


#: 2 processes x batch 8 x --accum-freq 2: the data set is one global batch, and with fewer captions than
#: --xsample-tau-s auto samples, the calibration sees every caption whichever way it samples them.
AUTO_N = 32
#: The line each process logs when it builds its loss, in OpenCLIP's log format (not the echo in Python's
#: default format that rank 0 also prints).
TAU_LINE = re.compile(r"\| INFO \| Loss: xsample \(X-Sample contrastive loss\): tau_s=([^,]+),")


def self_mass(captions_emb, tau_s):
    """Mean diagonal of the row softmax of S / tau_s over all the given captions (S: cosine), float64."""
    e = captions_emb.numpy()
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T / tau_s
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return float((p.diagonal() / p.sum(axis=1)).mean())


def test_auto_tau_s_gives_the_self_mass_at_the_global_batch_on_every_rank(setup):
    root = setup["root"] / "auto"
    csv = tiny_data.write_csv(root / "data", n=AUTO_N)
    argv = cr.train_argv(csv, setup["init"], 8, "--loss", "xsample", "--xsample-tau-s", "auto",
                         "--xsample-self-mass", "0.5", "--accum-freq", "2", epochs=1)
    run_dir, proc = cr.launch(root, argv, nproc=2)
    params = dict(line.split(": ", 1) for line in (run_dir / "params.txt").read_text().splitlines())
    tau = float(params["xsample_tau_s"])
    assert "X-Sample tau_s calibrated" in (run_dir / "out.log").read_text()
    # each process logs the tau_s its loss was built with (stderr of both): rank 0's, on both
    assert TAU_LINE.findall(proc.stdout + proc.stderr) == [f"{tau:.6g}"] * 2
    emb = cr.minilm(cr.csv_rows(csv)[1])
    # (calibrated at batch 8, 16 or 64 instead, tau_s gives 0.18, 0.33 or 0.67 here)
    assert self_mass(emb, tau) == pytest.approx(0.5, abs=1e-4)
    # and rank 0's first loss is the formula with that tau_s on the whole accumulated global batch
    img, txt, scale, _ = cr.features(setup["init"], csv)
    expected = cr.xsample_loss(img, txt, scale, emb, tau, clip_weight=cr.DEFAULT_CLIP_WEIGHT)
    assert cr.logged_losses(run_dir)[0] == pytest.approx(expected, rel=2e-4)
