"""The text-side self-mass and cosine correlation of demo.text_geometry, against cases worked by hand."""
import math

import torch

from xsample_openclip.demo import text_geometry


def test_self_mass_limits_and_a_worked_case():
    batches = [torch.arange(4)]
    orthogonal = torch.eye(4)
    assert math.isclose(text_geometry.self_mass(orthogonal, batches, scale=1e4), 1.0, abs_tol=1e-6)
    identical = torch.ones(4, 3) / math.sqrt(3)
    assert math.isclose(text_geometry.self_mass(identical, batches, scale=50.0), 0.25, abs_tol=1e-6)
    # orthogonal at scale s: own logit s, the three others 0 -> e^s / (e^s + 3)
    assert math.isclose(text_geometry.self_mass(orthogonal, batches, scale=2.0), math.e ** 2 / (math.e ** 2 + 3),
                        rel_tol=1e-6)


def test_batches_draw_without_replacement_and_repeat_with_the_seed():
    first = text_geometry.batches(10, 6, 3, seed=1)
    assert all(len(set(b.tolist())) == 6 for b in first)
    assert all(torch.equal(a, b) for a, b in zip(first, text_geometry.batches(10, 6, 3, seed=1)))


def test_pair_correlation_is_one_for_a_rotation_and_not_for_a_shuffle():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=-1)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert math.isclose(text_geometry.pair_correlation(a, a @ rotation), 1.0, abs_tol=1e-6)
    assert text_geometry.pair_correlation(a, a[torch.randperm(20, generator=g)]) < 0.5
