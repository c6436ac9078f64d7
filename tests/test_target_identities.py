"""The target graphs keep their identities under the CUDA similarity path, run here on the host.

Issue 17, fault 3: on CUDA the caption similarities were one float16 GEMM, which moves S_ii by up to
~1.4e-4, more than ``IDENTICAL`` (1e-5): t_ii = exp((S_ii - 1)/tau_s) < 1 on many rows (0.25 at tau_s 1e-4),
identical captions stopped being full positives, and the tau_s -> 0 limit was no longer SigLIP's loss.
``SPLIT_HALF_DEVICES`` is widened to the CPU here, so the CUDA arithmetic (float16 pieces, products exact
in fp32, fp32 accumulation) runs on the host. Captions are float32 unit rows as the losses get them: rows
of a float16 table, with exact duplicates, float16-table copies of fp32 rows (identical up to rounding,
1 - S ~ 1e-8) and near-duplicates (1 - S ~ 5e-5..2e-3: not identical, and where tau_s 1e-4 is sensitive).

Proved, at tau_s 1e-4 (what ``auto`` can return) and 0.033, against float64 references written here:
- S is within 2e-6 of float64 everywhere, exactly 1 for identical captions, below 1 for all others;
- kernel targets: t = 1 exactly for a caption and itself and for identical captions, < 1 otherwise, and
  within the relative error 2e-6 / tau_s allows of exp((S - 1) / tau_s);
- softmax targets: identical captions share their row's mass exactly evenly, rows sum to 1, entries close
  to the float64 row softmax;
- tau_s -> 0 with distinct captions: ``XSampleSigLipLoss`` is OpenCLIP's ``SigLipLoss`` and ``XSampleLoss``
  is ``ClipLoss`` (value and every gradient);
- a failing fast GEMM raises (no silent fallback);
- the data is sensitive: a plain float16 GEMM would move S_ii by more than ``IDENTICAL`` on many rows.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from xsample_openclip.losses import XSampleLoss, XSampleSigLipLoss, graph
from xsample_openclip.losses.graph import IDENTICAL, caption_similarities, kernel_targets, softmax_targets

TAUS = [1e-4, 0.033]
WIDTH = 384  # the packaged caption encoder's width


@pytest.fixture
def cuda_numerics(monkeypatch):
    """The CUDA similarity path (float16 GEMM pieces) on the host."""
    monkeypatch.setattr(graph, "SPLIT_HALF_DEVICES", frozenset({"cpu", "cuda"}))


def table_rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, WIDTH, generator=g), dim=-1).half().float()


def captions(seed=0):
    """(float32 caption rows, bool matrix of identical pairs by construction, diagonal included)."""
    g = torch.Generator().manual_seed(seed + 100)
    base = table_rows(160, seed)
    fp32 = F.normalize(torch.randn(4, WIDTH, generator=g), dim=-1)
    near = torch.cat([F.normalize(base[i] + eps * torch.randn(WIDTH, generator=g), dim=-1)[None]
                      for i, eps in zip(range(20, 26), (5e-4, 8e-4, 1e-3, 1.5e-3, 2e-3, 3e-3))])
    rows = torch.cat([base, base[:8], fp32, fp32.half().float() * 2.5, near])
    same = list(range(len(rows)))  # the caption each row is
    same[160:168] = range(8)
    same[168:172] = same[172:176] = range(1000, 1004)
    ids = torch.tensor(same)
    return rows, ids[:, None] == ids[None, :]


def unit(rows):
    return graph.unit_captions(rows)  # what the losses do first


def reference_similarities(rows):
    """float64 cosines with the documented identity rule (within IDENTICAL of 1 -> exactly 1)."""
    u = F.normalize(rows.double(), dim=-1)
    s = u @ u.T
    return torch.where(s >= 1 - IDENTICAL, torch.ones_like(s), s)


def test_the_data_has_what_the_tests_need():
    rows, identical = captions()
    s64 = F.normalize(rows.double(), dim=-1) @ F.normalize(rows.double(), dim=-1).T
    assert torch.equal(s64 >= 1 - IDENTICAL, identical)  # the construction's identical pairs, no others
    gaps = 1 - s64[~identical]
    assert 3e-5 < gaps.min() < 1e-4  # near-duplicates: at tau_s 1e-4 their targets are e^-0.5 and below
    assert identical.sum() > len(rows) + 20  # duplicates and float16 copies besides the diagonal


def test_a_plain_float16_gemm_breaks_the_diagonal():
    """Why the tests below can fail: one float16 GEMM (the old CUDA path) on this data."""
    u = unit(captions()[0])
    s16 = graph._half_gemm(u.half(), u.half())
    off = (s16.diagonal() - 1).abs()
    assert (off > IDENTICAL).float().mean() > 0.2 and off.max() > 5e-5  # measured: 79 % of rows, up to 1.2e-4


def test_similarities_are_float32_accurate_with_exact_identities(cuda_numerics):
    rows, identical = captions()
    s = caption_similarities(unit(rows), unit(rows))
    assert s.dtype == torch.float32
    assert bool((s[identical] == 1).all())
    assert bool((s[~identical] < 1).all())
    assert (s.double() - reference_similarities(rows)).abs().max() <= 2e-6  # measured 5.3e-7


@pytest.mark.parametrize("tau_s", TAUS)
def test_kernel_targets_are_one_exactly_for_identical_captions(cuda_numerics, tau_s):
    rows, identical = captions(seed=1)
    u = unit(rows)
    t = kernel_targets(u, u, tau_s)
    assert bool((t.diagonal() == 1).all())
    assert bool((t[identical] == 1).all())
    assert bool((t[~identical] < 1).all())
    expected = ((reference_similarities(rows) - 1) / tau_s).exp()
    visible = expected > 1e-12
    relative = (t.double()[visible] / expected[visible] - 1).abs().max().item()
    # S within 2e-6 moves the exponent by 2e-6 / tau_s (0.02 at 1e-4; 6e-5 at 0.033); fp32 exp adds 1e-7.
    # measured: 2.9e-3 / 8.7e-6; one float16 GEMM (the old CUDA path): targets off by up to a factor ~3
    assert relative <= math.expm1(2e-6 / tau_s) + 1e-6


@pytest.mark.parametrize("tau_s", TAUS)
def test_softmax_targets_share_mass_evenly_between_identical_captions(cuda_numerics, tau_s):
    rows, identical = captions(seed=2)
    u = unit(rows)
    p = softmax_targets(u, u, tau_s)
    for i, j in identical.nonzero().tolist():
        assert p[i, j] == p[i, i], (i, j)
    torch.testing.assert_close(p.sum(1), torch.ones(len(rows)), rtol=0, atol=1e-5)
    expected = (reference_similarities(rows) / tau_s).softmax(dim=1)
    # logits within 2e-6 / tau_s: |dP| <= P * 2 * 2e-6 / tau_s (0.04 P at 1e-4); measured 3.6e-4 / 2.1e-6,
    # and 0.13 / 4.6e-4 with one float16 GEMM
    assert (p.double() - expected).abs().max().item() <= 2 * 2e-6 / tau_s * 1.05 + 1e-6
    assert expected[~identical].max() > 0.05  # near-duplicates carry mass: the comparison is not trivial


def distinct_batch(n=48, d=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return img, txt, table_rows(n, seed)


def value_and_grads(loss_call, *inputs):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    loss = loss_call(*leaves)
    loss.backward()
    return [loss.detach()] + [x.grad for x in leaves]


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("target", ["kernel", "softmax"])
@pytest.mark.parametrize("tau_s", TAUS)
def test_small_tau_sigmoid_loss_is_siglip_loss(cuda_numerics, tau_s, target):
    img, txt, cap = distinct_batch()
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    ours = value_and_grads(lambda i, t, s, b: XSampleSigLipLoss(tau_s=tau_s, target=target)(
        i, t, s, b, caption_embeddings=cap), img, txt, scale, bias)
    stock = value_and_grads(SigLipLoss(), img, txt, scale, bias)
    worst = max(rel_err(a, b) for a, b in zip(ours, stock))
    assert worst <= 1e-5  # fp32 features, summation order apart: measured <= 4.0e-7


@pytest.mark.parametrize("tau_s", TAUS)
def test_small_tau_softmax_loss_is_clip_loss(cuda_numerics, tau_s):
    img, txt, cap = distinct_batch(seed=4)
    scale = torch.tensor(20.0)
    ours = value_and_grads(lambda i, t, s: XSampleLoss(tau_s=tau_s)(i, t, s, caption_embeddings=cap),
                           img, txt, scale)
    stock = value_and_grads(ClipLoss(), img, txt, scale)
    assert max(rel_err(a, b) for a, b in zip(ours, stock)) <= 1e-5  # measured <= 3.1e-7


@pytest.mark.parametrize("tau_s", TAUS)
def test_targets_the_sigmoid_loss_uses_keep_the_identities(cuda_numerics, tau_s):
    """Read back from the loss's gradient (image = text = identity basis, s = 1, b = 0)."""
    rows, identical = captions(seed=5)
    n = len(rows)
    eye = torch.eye(n, dtype=torch.float64)
    for target in ("kernel", "softmax"):
        img = eye.clone().requires_grad_(True)
        XSampleSigLipLoss(tau_s=tau_s, target=target)(img, eye, torch.tensor(1.0, dtype=torch.float64),
                                                      torch.tensor(0.0, dtype=torch.float64),
                                                      caption_embeddings=rows).backward()
        seen = torch.sigmoid(eye) - n * img.grad
        if target == "kernel":
            assert (seen[identical] - 1).abs().max() <= 1e-14
        else:
            diag = seen.diagonal()[:, None].expand(n, n)
            assert (seen[identical] - diag[identical]).abs().max() <= 1e-14


def test_a_failing_fast_gemm_raises(cuda_numerics, monkeypatch):
    def broken(left, right):
        raise RuntimeError("no float16 GEMM here")

    monkeypatch.setattr(graph, "_half_gemm", broken)
    u = unit(captions()[0])
    with pytest.raises(RuntimeError, match="no float16 GEMM"):
        kernel_targets(u, u, 0.1)
