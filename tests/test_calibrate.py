"""``--xsample-tau-s auto``: the self-mass estimator against exact batch targets, the tau_s it solves for,
and the command that prints target statistics for a data set."""
import math

import pytest
import torch

from xsample_openclip.losses.graph import softmax_targets
from xsample_openclip.targets.calibrate import similarities_of, target_stats, tau_for_self_mass


def captions(m=40, d=6, seed=0, duplicates=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=-1)
    e[:duplicates] = e[duplicates:2 * duplicates]  # identical captions, as real data has
    return e


@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("duplicates", [0, 3])
def test_estimate_is_exact_when_the_batch_is_the_sample(tau, duplicates):
    """With N = m the estimator's sum over N - 1 others is the sum over the sample: it must equal the
    mean diagonal and mean entropy of the real softmax targets (float64, measured agreement ~1e-15)."""
    e = captions(duplicates=duplicates)
    p = softmax_targets(e, e, tau)
    stats = target_stats(similarities_of(e), tau, batch_size=len(e))
    assert stats["self_mass"] == pytest.approx(float(p.diagonal().mean()), rel=1e-12)
    entropy = float(-(p * p.clamp_min(1e-300).log()).sum(1).mean())
    assert stats["entropy"] == pytest.approx(entropy, rel=1e-12)


def test_estimate_for_smaller_batches_is_close_to_sampled_batches():
    """For N < m (random batches of the sample): the estimator plugs the expected sum over the other
    captions into 1 / (1 + sum), a convex function, so it is slightly low (Jensen); measured here
    0.1621 against 0.1652 for the mean over 300 sampled batches of 64 (1.9 % low)."""
    e = captions(m=400, seed=1)
    sims = similarities_of(e)
    g = torch.Generator().manual_seed(2)
    masses = []
    for _ in range(300):
        idx = torch.randperm(400, generator=g)[:64]
        masses.append(float(softmax_targets(e[idx], e[idx], 0.3).diagonal().mean()))
    estimate = target_stats(sims, 0.3, 64)["self_mass"]
    sampled = sum(masses) / len(masses)
    assert sampled * 0.96 < estimate < sampled


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.8])
def test_solved_tau_gives_the_asked_self_mass(mass):
    sims = similarities_of(captions(m=100, seed=3))
    tau = tau_for_self_mass(sims, mass, batch_size=256)
    assert target_stats(sims, tau, 256)["self_mass"] == pytest.approx(mass, abs=1e-9)
    assert tau_for_self_mass(sims, mass, batch_size=4096) < tau  # bigger batch: more columns share the mass


def test_self_mass_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"self-mass must be in \(0, 1\)"):
        tau_for_self_mass(similarities_of(captions()), 1.0, 64)


def test_target_stats_command_prints_the_table(csv_data, capsys):
    from xsample_openclip import target_stats

    assert target_stats.main(["--model", "xs-tiny-vit-32", "--train-data", str(csv_data), "--batch-size", "32",
                              "--taus", "0.1,0.2", "--self-mass", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "| 0.1 |" in out and "| 0.2 |" in out and "| 0.5 |" in out
    assert f"{math.log(32):.2f} nats" in out


def test_target_stats_command_refuses_a_failing_stream_naming_the_ways_out():
    """A streamed source that fails stops the command with auto's own refusal, not a traceback."""
    from xsample_openclip import target_stats

    with pytest.raises(SystemExit) as stop:
        target_stats.main(["--model", "xs-tiny-vit-32", "--train-data", "pipe:exit 3", "--dataset-type", "webdataset",
                           "--batch-size", "32"])
    message = str(stop.value.code)
    assert message.startswith("error: --xsample-tau-s auto could not read the training captions of --train-data")
    assert "exited with status 3" in message and "--xsample-calibration-data" in message


def identical(m=32):
    """m copies of one caption embedding: every target row is uniform over the batch at any tau_s."""
    return similarities_of(captions(m=1).repeat(m, 1))


def test_a_self_mass_identical_captions_cannot_reach_is_refused_not_clamped():
    """All-identical captions at batch 8: self-mass is 1/8 whatever tau_s, so 0.7 (above) and 0.05 (below)
    cannot be reached; the error says what was asked and what is reachable, the bound is not returned."""
    for asked, side in ((0.7, "above"), (0.05, "below")):
        with pytest.raises(ValueError) as err:
            tau_for_self_mass(identical(), asked, 8)
        assert (err.value.asked, err.value.side) == (asked, side)
        assert err.value.reachable == pytest.approx(1 / 8, abs=1e-12)
        assert f"self-mass {asked}" in str(err.value) and "0.125" in str(err.value)


def test_a_self_mass_a_tiny_batch_cannot_go_below_is_refused():
    """Batch 2, distinct captions: the row's one other caption weighs exp((S_ij - 1) / tau_s) <= 1 of the
    sample's 1, so self-mass >= 1/2 at any tau_s; at the flattest tau_s (10) it is the mean of
    1 / (1 + exp((S_ij - 1) / 10)) over the sample's pairs (the estimator at N = 2), computed here."""
    e = captions(m=40, seed=4)
    s = similarities_of(e)
    w = torch.exp((s - 1.0) / 10.0)
    w.fill_diagonal_(0.0)
    flattest = float((1.0 / (1.0 + w.sum(1) / (len(s) - 1))).mean())
    with pytest.raises(ValueError) as err:
        tau_for_self_mass(s, 0.3, 2)
    assert err.value.side == "below" and err.value.reachable == pytest.approx(flattest, rel=1e-12)


def test_auto_refuses_at_start_up_when_identical_captions_cap_the_self_mass(tmp_path, capsys):
    """The measured case: class captions, here all identical, at a small batch; default self-mass 0.7."""
    import tiny_data

    err = tiny_data.startup_refusal(tmp_path, capsys, 64)
    assert "--xsample-tau-s auto cannot reach self-mass 0.7" in err and "global batch 8" in err
    assert "at most 0.125" in err  # 1/8: eight identical captions share each row
    for fix in ("--xsample-self-mass", "--xsample-tau-s"):
        assert fix in err


def test_target_stats_table_says_which_self_mass_auto_would_refuse():
    from xsample_openclip import target_stats

    table = target_stats.report(identical(), 8, [0.1], [0.125, 0.7])
    assert "| 0.7 | refused: at most 0.125 reachable |" in table
    assert "| 0.125 | 10 |" in table  # exactly 1/8: every tau_s gives it
