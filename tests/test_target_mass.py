"""The target-mass study (``python -m xsample_openclip.demo.target_mass``) against shares computed by hand."""
import math

import torch

from xsample_openclip.demo import target_mass


def _shapes_rows():
    return [{"colour": c, "shape": s} for c, s in
            [("red", "circle"), ("red", "circle"), ("red", "square"), ("blue", "circle"), ("blue", "square")]]


def test_shapes_shares_equal_the_softmax_rows_summed_by_kind():
    rows = _shapes_rows()
    e = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.6, 0.8, 0], [0.8, 0, 0.6], [0, 0, 1.0]])
    tau = 0.25
    # one batch that is the whole set: every anchor's row is softmax_j(e_i . e_j / tau)
    shares = target_mass.mass_shares(e, rows, tau, batch_size=5, batches=1,
                                     kind=target_mass.shapes_kind, anchor=lambda r: True)
    expected = {}
    for i in range(5):
        logits = [float(e[i] @ e[j]) / tau for j in range(5)]
        z = sum(math.exp(v) for v in logits)
        for j in range(5):
            name = "self" if i == j else target_mass.shapes_kind(rows[i], rows[j])
            expected[name] = expected.get(name, 0.0) + math.exp(logits[j]) / z / 5
    assert set(shares) == set(expected)
    for name in expected:
        assert abs(shares[name] - expected[name]) < 1e-6, name
    assert abs(sum(shares.values()) - 1) < 1e-6


def test_emoji_anchors_and_habitat_partners():
    rows = [{"concept": "animal", "background": "habitat:animal"},
            {"concept": "animal", "background": "habitat:animal"},
            {"concept": "animal", "background": "habitat:food"},
            {"concept": "food", "background": "habitat:animal"},
            {"concept": "", "background": "plain"}]
    e = torch.eye(5)
    shares = target_mass.mass_shares(e, rows, 0.5, batch_size=5, batches=1)
    # 4 anchors (the non-concept image is none); each row: exp(2) on self, 1 on each other sample
    z = math.exp(2) + 4
    assert abs(shares["self"] - math.exp(2) / z) < 1e-6
    # same-concept pairs among anchors: 0-1, 0-2, 1-0, 1-2, 2-0, 2-1: 6 of them over 4 anchors
    assert abs(shares["same concept"] - 6 / z / 4) < 1e-6
    # of those 6 partners, 0-1 and 1-0 share the habitat
    assert abs(shares["same-concept partners on the anchor's habitat"] - 2 / 6) < 1e-9
    # other concept on the anchor's habitat: 0-3, 1-3 (food on the animal habitat) and 3-0, 3-1
    assert abs(shares["other concept, anchor's habitat"] - 4 / z / 4) < 1e-6
    assert target_mass.data_kind(rows) == "emoji" and target_mass.data_kind(_shapes_rows()) == "shapes"
