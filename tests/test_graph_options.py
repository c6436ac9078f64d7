"""Caption-graph options (``--xsample-graph-centre/-whiten/-topk``, ``--xsample-clip-weight-schedule``)
against independent float64 computations written here, their refusals, and ``auto`` on the graph used."""
import argparse
import copy
import math

import numpy as np
import pytest
import torch

from xsample_openclip.losses import graph
from xsample_openclip.losses.sigmoid import XSampleSigLipLoss, sigmoid_loss_reference
from xsample_openclip.losses.softmax import XSampleLoss
from xsample_openclip.targets import calibrate
from xsample_openclip.targets.flags import CAPTION_TARGETS, calibration_similarities
from xsample_openclip.targets.graph_options import CentredEmbedder, GraphStatistics


def unit(n, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def with_duplicates():
    """10 captions; 3 and 7 are copies of 0 (ties at S = 1), 5 a copy of 2."""
    e = unit(10)
    e[3] = e[0]
    e[7] = e[0]
    e[5] = e[2]
    return e


def topk_keep(s, k):
    """Independent: row i keeps column j iff fewer than k columns are strictly more similar than j."""
    s = np.asarray(s)
    keep = np.zeros_like(s, dtype=bool)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            keep[i, j] = np.sum(s[i] > s[i, j]) < k
    return keep


def reference_softmax(e_rows, e_cols, tau, k=None, offset=0, clip_weight=0.0):
    s = np.asarray(e_rows) @ np.asarray(e_cols).T
    s[np.abs(s - 1) <= graph.IDENTICAL] = 1.0
    logits = s / tau
    if k is not None:
        logits = np.where(topk_keep(s, k), logits, -np.inf)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p *= 1 - clip_weight
    p[np.arange(len(p)), np.arange(len(p)) + offset] += clip_weight
    return p


# --- top-k ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3, 4, 9, 10, 50])
def test_softmax_topk_keeps_each_rows_k_nearest_with_ties(k):
    e = with_duplicates()
    got = graph.softmax_targets(e, e, 0.3, topk=k).numpy()
    np.testing.assert_allclose(got, reference_softmax(e, e, 0.3, k), atol=1e-12)
    assert (got > 0).sum(1).min() >= min(k, 10)
    # row 0 has three captions at S = 1 (itself, 3, 7): with K = 2 all three stay, sharing the mass evenly
    if k == 2:
        assert set(np.flatnonzero(got[0])) == {0, 3, 7}
        assert got[0, 0] == got[0, 3] == got[0, 7]


def test_topk_rows_are_local_columns_global():
    """A rank's rows against the global columns are those rows of the full target (clip weight on its diagonal)."""
    e = with_duplicates()
    full = graph.softmax_targets(e, e, 0.2, clip_weight=0.3, topk=3)
    local = graph.softmax_targets(e[4:8], e, 0.2, row_offset=4, clip_weight=0.3, topk=3)
    torch.testing.assert_close(local, full[4:8], rtol=0, atol=1e-15)
    np.testing.assert_allclose(local.numpy(), reference_softmax(e[4:8], e, 0.2, 3, 4, 0.3), atol=1e-12)


def test_kernel_topk_zeroes_pairs_outside_the_rows_k_nearest_over_all_columns():
    e = with_duplicates()
    thresholds = graph.topk_thresholds(graph.caption_similarities(e, e), 3)
    # a block of columns (another rank's texts) uses the thresholds of the whole global batch
    block = graph.kernel_targets(e, e[5:], 0.25, thresholds).numpy()
    s = e.numpy() @ e.numpy().T
    s[np.abs(s - 1) <= graph.IDENTICAL] = 1.0
    expected = np.where(topk_keep(s, 3), np.exp((s - 1) / 0.25), 0.0)[:, 5:]
    np.testing.assert_allclose(block, expected, atol=1e-12)
    assert np.diag(graph.kernel_targets(e, e, 0.25, thresholds).numpy()).tolist() == [1.0] * 10


def test_losses_use_the_topk_target():
    e, g = with_duplicates(), torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(10, 4, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(10, 4, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(5.0, dtype=torch.float64)
    p = torch.from_numpy(reference_softmax(e, e, 0.3, 3, clip_weight=0.2))
    z = scale * img @ txt.T
    expected = (-(p * z.log_softmax(1)).sum(1).mean() - (p * z.T.log_softmax(1)).sum(1).mean()) / 2
    got = XSampleLoss(tau_s=0.3, topk=3, clip_weight=0.2)(img, txt, scale, caption_embeddings=e)
    assert abs(float(got) - float(expected)) < 1e-9
    assert abs(float(XSampleLoss(tau_s=0.3, clip_weight=0.2)(img, txt, scale, caption_embeddings=e)) - float(got)) > 1e-4

    bias = torch.tensor(-2.0, dtype=torch.float64)
    s = e.numpy() @ e.numpy().T
    s[np.abs(s - 1) <= graph.IDENTICAL] = 1.0
    kernel = torch.from_numpy(np.where(topk_keep(s, 3), np.exp((s - 1) / 0.3), 0.0))
    for target, t in (("kernel", kernel), ("softmax", kernel / kernel.sum(1, keepdim=True))):
        loss = XSampleSigLipLoss(tau_s=0.3, target=target, topk=3)
        got = loss(img, txt, scale, bias, caption_embeddings=e)
        assert abs(float(got) - float(sigmoid_loss_reference(img, txt, scale, bias, t))) < 1e-9, target


def test_topk_reaches_the_losses_from_their_plugins():
    from xsample_openclip.plugins import XSampleLossPlugin, XSampleSigLipLossPlugin

    args = argparse.Namespace(xsample_tau_s=0.1, xsample_clip_weight=0.2, xsample_image_weight=0.0,
                              xsample_graph_topk=4, xsample_clip_weight_schedule="linear-down",
                              xsample_siglip_target="kernel", local_loss=False, gather_with_grad=False,
                              rank=0, world_size=1, horovod=False, loss_dist_impl=None, xsample_views=1)
    softmax, _ = XSampleLossPlugin().make_loss(args, None)
    sigmoid, _ = XSampleSigLipLossPlugin().make_loss(args, None)
    assert softmax.topk == 4 and sigmoid.topk == 4 and softmax.clip_weight_schedule == "linear-down"
    assert XSampleLoss(None, tau_s=0.1).topk is None


@pytest.mark.parametrize("k", [1, 0, -3, 2.5, True])
def test_bad_topk_is_refused(k):
    with pytest.raises(ValueError, match="top-k must be an integer >= 2"):
        graph.softmax_targets(unit(4), unit(4), 0.1, topk=k)


# --- centring and whitening ------------------------------------------------------------------------------

def test_centring_subtracts_the_sample_mean_and_renormalises():
    e = with_duplicates()
    mean, whitening = graph.centring_statistics(e)
    assert whitening is None
    x = e.numpy() - e.numpy().mean(0)
    expected = x / np.linalg.norm(x, axis=1, keepdims=True)
    got = graph.centre_captions(e, mean)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    s = graph.caption_similarities(got, got)
    assert s.diagonal().tolist() == [1.0] * 10 and s[0, 3] == s[0, 7] == s[2, 5] == 1.0  # IDENTICAL kept
    assert float((e @ e.T).mean()) - float((got @ got.T).mean()) > 0.05  # what all shared is gone


def test_whitening_is_zca_with_a_ridge():
    e = unit(40, d=5, seed=3)
    mean, w = graph.centring_statistics(e, whiten=True)
    x = e.numpy() - e.numpy().mean(0)
    cov = x.T @ x / len(x)
    lam, v = np.linalg.eigh(cov)
    ridge = graph.WHITEN_RIDGE * lam.mean()
    np.testing.assert_allclose(w.numpy(), v @ np.diag(1 / np.sqrt(lam + ridge)) @ v.T, atol=1e-10)
    y = x @ w.numpy()
    np.testing.assert_allclose(y.T @ y / len(y), v @ np.diag(lam / (lam + ridge)) @ v.T, atol=1e-10)
    got = graph.centre_captions(e, mean, w).numpy()
    np.testing.assert_allclose(got, y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-12)


def test_centring_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="at least 2 captions"):
        graph.centring_statistics(unit(1))
    e = unit(2)
    with pytest.raises(ValueError, match="equals the mean caption"):
        graph.centre_captions(e[:1], e[0])
    with pytest.raises(ValueError, match="covariance is 0"):
        graph.centring_statistics(unit(1).repeat(3, 1), whiten=True)
    # one distinct caption: it is the mean caption, which centre_captions would refuse at the first step
    with pytest.raises(ValueError, match="covariance is 0"):
        graph.centring_statistics(unit(1).repeat(3, 1))


@pytest.mark.parametrize("whiten", [False, True])
def test_centring_on_one_distinct_caption_is_refused_at_start_up(tmp_path, capsys, whiten):
    """All captions of the calibration sample identical: refused before anything is written, naming the
    flag, not accepted (centre) or raised as a traceback (whiten) at start-up."""
    import tiny_data

    err = tiny_data.startup_refusal(tmp_path, capsys, 32, "--xsample-tau-s", "0.1", "--xsample-graph-centre",
                                    *(["--xsample-graph-whiten"] if whiten else []))
    assert "--xsample-graph-centre cannot centre on the calibration sample" in err and "covariance is 0" in err
    assert "32 captions" in err and "drop --xsample-graph-centre" in err


def test_statistics_file_round_trip_and_tamper_check(tmp_path):
    e = unit(12)
    stats = GraphStatistics.from_sample(e, True, "12 captions")
    path = stats.save(tmp_path)
    back = GraphStatistics.load(path)
    assert back.digest == stats.digest and str(stats).startswith(f"sha256:{stats.digest} (centre+whiten;")
    torch.testing.assert_close(back.whitening, stats.whitening, rtol=0, atol=0)
    data = torch.load(path, weights_only=True)
    data["mean"][0] += 1e-9
    torch.save(data, path)
    with pytest.raises(ValueError, match="hash to"):
        GraphStatistics.load(path)


def test_centred_embedder_forwards_and_copies_its_embedder():
    class Counting:
        def __init__(self):
            self.stats = []

        def __call__(self, tokens):
            self.stats.append(len(tokens))
            return tokens.double()

    e = with_duplicates()
    stats = GraphStatistics.from_sample(e, False, "sample")
    wrapped = CentredEmbedder(Counting(), stats)
    np.testing.assert_allclose(wrapped(e).numpy(), graph.centre_captions(e, stats.mean).numpy(), atol=1e-7)
    twin = copy.copy(wrapped)
    twin.stats = ["fresh"]
    twin(e)
    assert wrapped.stats == [10] and twin.stats == ["fresh", 10]


# --- auto tau_s on the graph used ------------------------------------------------------------------------

@pytest.mark.parametrize("centre,topk", [(False, None), (True, None), (False, 6), (True, 6)])
def test_auto_tau_gives_the_asked_self_mass_on_the_graph_used(centre, topk):
    """With the sample as the batch (m = N) the estimate is exact: the loss's own targets then have mean
    self-mass 0.7 at the calibrated tau_s."""
    e = unit(32, d=8, seed=5) + 0.8 * unit(1, d=8, seed=6)   # a shared component, as a template gives
    stats = GraphStatistics.from_sample(e, False, "all") if centre else None
    sims = calibration_similarities(e, stats, topk, 32)
    tau = calibrate.tau_for_self_mass(sims, 0.7, 32)
    rows = graph.centre_captions(e, stats.mean) if centre else graph.unit_captions(e)
    target = graph.softmax_targets(rows, rows, tau, topk=topk)
    assert abs(float(target.diagonal().mean()) - 0.7) < 1e-6
    assert abs(calibrate.target_stats(sims, tau, 32)["self_mass"] - 0.7) < 1e-6
    if topk:  # the cut graph needs another tau_s than the full one
        full = calibrate.tau_for_self_mass(calibration_similarities(e, stats, None, 32), 0.7, 32)
        assert abs(full - tau) / tau > 0.01


def test_topk_calibration_at_a_larger_batch_keeps_the_same_share_of_the_sample():
    e = unit(201, d=8, seed=7)
    sims = calibrate.similarities_of(e)
    cut = calibrate.topk_similarities(sims, 11, 101)   # K - 1 = 10 of 100 others -> 20 of the sample's 200
    assert ((cut > -math.inf).sum(1) == 21).all()
    assert calibrate.topk_similarities(sims, 101, 101) is sims


# --- the hard-target schedule ----------------------------------------------------------------------------

def test_clip_weight_schedules():
    assert [graph.clip_weight_at("constant", 0.4, e, 5) for e in range(5)] == [0.4] * 5
    assert [round(graph.clip_weight_at("linear-down", 0.4, e, 5), 12) for e in range(5)] == [0.4, 0.3, 0.2, 0.1, 0.0]
    assert [round(graph.clip_weight_at("linear-up", 0.4, e, 5), 12) for e in range(5)] == [0.0, 0.1, 0.2, 0.3, 0.4]
    with pytest.raises(ValueError, match="epochs >= 2"):
        graph.clip_weight_at("linear-up", 0.4, 0, 1)
    with pytest.raises(ValueError, match="must be one of"):
        graph.clip_weight_at("cosine", 0.4, 0, 3)


def test_the_loss_takes_its_epochs_weight_before_the_epoch():
    e, img = with_duplicates(), unit(10, d=4, seed=2)
    scale = torch.tensor(3.0, dtype=torch.float64)
    loss = XSampleLoss(tau_s=0.3, clip_weight=0.4, clip_weight_schedule="linear-up")
    run = argparse.Namespace(epochs=3, xsample_clip_weight_schedule="linear-up")
    loss.begin_epoch(1, run)   # a run resumed at epoch 1
    assert loss.clip_weight == pytest.approx(0.2)
    fixed = XSampleLoss(tau_s=0.3, clip_weight=0.2)
    assert float(loss(img, img, scale, caption_embeddings=e)) == float(fixed(img, img, scale, caption_embeddings=e))
    loss.begin_epoch(2, run)
    assert loss.clip_weight == pytest.approx(0.4)
    with pytest.raises(ValueError, match="clip_weight_schedule must be one of"):
        XSampleLoss(tau_s=0.3, clip_weight_schedule="step")


def test_the_training_loop_calls_begin_epoch(monkeypatch):
    from xsample_openclip.patches import train_loop

    calls = []

    class Loss:
        needs_batch_tokens = False

        def begin_epoch(self, epoch, args):
            calls.append(("begin", epoch))

        def end_epoch(self, epoch, args):
            calls.append(("end", epoch))

        def single_process(self):
            return self

    def stock(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        calls.append(("train", epoch))

    wrapped = train_loop.wrap_train_one_epoch(stock)
    wrapped(None, {}, Loss(), 4, None, None, None, None, argparse.Namespace())
    assert calls == [("begin", 4), ("train", 4), ("end", 4)]


# --- flag refusals ---------------------------------------------------------------------------------------

def flags(**kw):
    base = dict(CAPTION_TARGETS.defaults)
    base.update(loss="xsample", dataset_type="csv", xsample_clip_weight=0.0, xsample_image_weight=0.0,
                xsample_views=1, epochs=4)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("change,message", [
    (dict(xsample_graph_whiten=True), "--xsample-graph-whiten whitens the centred graph: add --xsample-graph-centre"),
    (dict(xsample_graph_topk=1), "--xsample-graph-topk must be >= 2, got 1"),
    (dict(xsample_graph_topk=4, loss="xclr"), "--xsample-graph-topk is not applied by --loss xclr"),
    (dict(xsample_graph_topk=4, xsample_views=2, xsample_image_weight=0.5), "two-view image-image term"),
    (dict(xsample_clip_weight_schedule="linear-down"), "which is 0: give the weight"),
    (dict(xsample_clip_weight_schedule="linear-up", xsample_clip_weight=0.4, epochs=1), "needs --epochs >= 2"),
    (dict(xsample_clip_weight_schedule="linear-up", loss="xsample-siglip"), "which only --loss xsample has"),
])
def test_bad_graph_flags_are_refused(change, message):
    problems = CAPTION_TARGETS.validate(flags(**change))
    assert any(message in p for p in problems), problems


def test_good_graph_flags_pass():
    assert CAPTION_TARGETS.validate(flags(xsample_graph_centre=True, xsample_graph_whiten=True, xsample_graph_topk=8,
                                          xsample_clip_weight=0.4, xsample_clip_weight_schedule="linear-down")) == []
    assert {"xsample_graph_centre", "xsample_graph_whiten", "xsample_graph_topk",
            "xsample_clip_weight_schedule"} <= set(CAPTION_TARGETS.kept)


def test_auto_refuses_a_self_mass_that_topk_cannot_reach():
    from xsample_openclip.targets.flags import _Drawn, _SampleCache

    class Sample:
        captions = ["x"] * 32

        @staticmethod
        def describe():
            return "32 captions"

        class report:
            @staticmethod
            def summary():
                return "read"

    cache = _SampleCache()
    cache.drawn = _Drawn(Sample(), unit(32, d=8, seed=9))
    args = flags(xsample_graph_topk=2, xsample_self_mass=0.3)
    result = CAPTION_TARGETS._calibrate_now(args, None, 32, sample_cache=cache)
    assert any("cannot reach self-mass 0.3 with --xsample-graph-topk 2" in p for p in result.problems), result.problems
    args = flags(xsample_graph_topk=2, xsample_self_mass=0.7)
    result = CAPTION_TARGETS._calibrate_now(args, None, 32, sample_cache=cache)
    assert not result.problems and "graph top-2" in result.notes[-1]
    target = graph.softmax_targets(unit(32, d=8, seed=9), unit(32, d=8, seed=9), result.updates["xsample_tau_s"], topk=2)
    assert abs(float(target.diagonal().mean()) - 0.7) < 1e-6


def test_statistics_read_as_text_and_travel_with_their_tensors():
    import json
    import pickle

    stats = GraphStatistics.from_sample(unit(12), True, "12 captions")
    assert json.loads(json.dumps({"s": stats}))["s"] == str(stats) and isinstance(stats, str)
    back = pickle.loads(pickle.dumps(stats))
    assert back == stats and back.digest == stats.digest
    torch.testing.assert_close(back.whitening, stats.whitening, rtol=0, atol=0)
