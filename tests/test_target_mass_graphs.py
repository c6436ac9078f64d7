"""The target-mass study's graph and caption variants (``--graphs``, ``--captions``, ``--tau-s auto``)."""
import numpy as np
import pytest
import torch

from xsample_openclip.demo import target_mass
from xsample_openclip.targets import calibrate

ROWS = [{"colour": c, "shape": s, "title": f"t{i}"} for i, (c, s) in enumerate(
    [("red", "circle"), ("red", "circle"), ("red", "square"), ("blue", "circle"), ("blue", "square")])]
E = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0.1], [0.6, 0.8, 0], [0.8, 0, 0.6], [0, 0, 1.0]])


def test_graph_specs():
    assert target_mass.parse_graph("default") == {"centre": False, "whiten": False, "topk": None}
    assert target_mass.parse_graph("centre+whiten+top8") == {"centre": True, "whiten": True, "topk": 8}
    for bad, message in (("whiten", "whiten needs centre"), ("top", "unknown graph part"), ("mean", "unknown")):
        with pytest.raises(ValueError, match=message):
            target_mass.parse_graph(bad)
    assert target_mass.CAPTION_VARIANTS["colour-shape"](ROWS[2]) == "a red square"


def test_topk_shares_equal_the_cut_softmax_rows_summed_by_kind():
    e = target_mass.graph_embeddings(E, target_mass.parse_graph("centre"))
    x = E.double().numpy()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x -= x.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(e.numpy(), x, atol=1e-6)
    tau = 0.3
    shares = target_mass.mass_shares(e, ROWS, tau, batch_size=5, batches=1, kind=target_mass.shapes_kind,
                                     anchor=lambda r: True, topk=2)
    s = x @ x.T
    expected = {}
    for i in range(5):
        keep = [j for j in range(5) if np.sum(s[i] > s[i, j]) < 2]
        z = sum(np.exp(s[i, j] / tau) for j in keep)
        for j in keep:
            name = "self" if i == j else target_mass.shapes_kind(ROWS[i], ROWS[j])
            expected[name] = expected.get(name, 0.0) + np.exp(s[i, j] / tau) / z / 5
    assert set(expected) <= set(shares)
    for name in shares:  # kinds met only outside the cut get exactly 0
        assert abs(shares[name] - expected.get(name, 0.0)) < 1e-6, name
    assert any(shares[name] == 0.0 for name in shares)


def test_auto_tau_is_the_runs_calibration_on_that_graph():
    graph = target_mass.parse_graph("top3")
    e = torch.nn.functional.normalize(torch.randn(40, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    tau = target_mass.auto_tau(e, graph, 0.7, 16)
    sims = calibrate.topk_similarities(calibrate.similarities_of(e), 3, 16)
    assert abs(calibrate.target_stats(sims, tau, 16)["self_mass"] - 0.7) < 1e-6


def test_auto_tau_on_identical_captions_is_refused_naming_the_bound(tmp_path, capsys):
    """Every caption the same: no tau_s reaches self-mass 0.7 at batch 8, and the command says so (as
    training refuses it) instead of using the bound in silence."""
    rows = "title\tcolour\tshape\n" + "a red circle\tred\tcircle\n" * 8
    (tmp_path / "train.csv").write_text(rows)
    with pytest.raises(SystemExit) as stop:
        target_mass.main(["--data", str(tmp_path), "--tau-s", "auto", "--self-mass", "0.7", "--batch-size", "8",
                          "--batches", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "self-mass 0.7 cannot be reached at batch 8" in err and "at most 0.125" in err
    assert "--tau-s" in err and "Traceback" not in err
