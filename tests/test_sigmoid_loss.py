"""The sigmoid X-Sample loss (``--loss xsample-siglip``, ``XSampleSigLipLoss``) against independent references.

What is proved, in float64 unless said otherwise:
- its value is the module docstring's formula, sum_ij [softplus(z_ij) - t_ij z_ij] / n with z = s I.T^T + b,
  t = exp((S - 1)/tau_s) (kernel) or softmax_j(S_ij/tau_s) (softmax), written here as plain numpy loops;
- its gradients w.r.t. image/text features, logit_scale and logit_bias are the finite differences
  (``torch.autograd.gradcheck``, both target variants);
- tau_s -> 0 with distinct captions is OpenCLIP's ``SigLipLoss``: same value and same four gradients;
- the targets the loss really uses (read back from its gradient) are in [0, 1], 1 on the diagonal
  (kernel), equal for identical captions and exactly 1 between them (float16-rounded copies included);
- under bf16/fp16 autocast the loss and gradients are finite and within measured multiples of the
  autocast dtype's unit roundoff of the fp32 ones, tolerances that reject half-precision accumulation;
- a model without ``logit_bias`` is refused with a ValueError that names ``--siglip``;
- the fused autograd function equals ``sigmoid_loss_reference`` (plain autograd) on random inputs,
  n != m blocks and several row blocks included.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from xsample_openclip.losses import XSampleSigLipLoss, blockwise
from xsample_openclip.losses import sigmoid as sigmoid_module
from xsample_openclip.losses.sigmoid import sigmoid_loss_reference, soft_sigmoid_loss

TARGETS = ("kernel", "softmax")


def f64(value):
    return torch.tensor(value, dtype=torch.float64)


def batch(n=7, d=8, e=5, seed=0, dtype=torch.float64):
    """Unit image/text features and caption embeddings that are *not* unit rows (the loss renormalises)."""
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    cap = 3.0 * torch.randn(n, e, generator=g, dtype=dtype)
    return img, txt, cap


def reference_numpy(img, txt, cap, scale, bias, tau_s, target):
    """Straight from the module docstring, float64 loops over pairs."""
    img, txt, cap = (np.asarray(t, dtype=np.float64) for t in (img, txt, cap))
    cap = cap / np.sqrt((cap ** 2).sum(axis=1, keepdims=True))
    n, m = len(img), len(txt)
    total = 0.0
    for i in range(n):
        sims = [float(cap[i] @ cap[j]) for j in range(m)]
        normaliser = sum(math.exp(s / tau_s) for s in sims)
        for j in range(m):
            z = scale * float(img[i] @ txt[j]) + bias
            t = math.exp((sims[j] - 1.0) / tau_s) if target == "kernel" else math.exp(sims[j] / tau_s) / normaliser
            softplus = max(z, 0.0) + math.log1p(math.exp(-abs(z)))
            total += softplus - t * z
    return total / n


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def value_and_grads(loss_call, img, txt, scale, bias):
    """The loss and its gradients w.r.t. (image features, text features, logit_scale, logit_bias)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in (img, txt, scale, bias)]
    loss = loss_call(*leaves)
    loss.backward()
    return [loss.detach()] + [x.grad for x in leaves]


def targets_seen_by_loss(loss_fn, cap):
    """The target matrix the loss really uses, read back from its gradient.

    With image = text features = the identity basis, s = 1 and b = 0, z = Id and
    dL/dI_i = (sigma(z_i) - t_i) / n, so t = sigma(Id) - n dL/dI (exact up to float64 rounding).
    """
    n = len(cap)
    eye = torch.eye(n, dtype=torch.float64)
    img = eye.clone().requires_grad_(True)
    loss_fn(img, eye, f64(1.0), f64(0.0), caption_embeddings=cap).backward()
    return torch.sigmoid(eye) - n * img.grad


# --- value: the docstring's formula ---------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("tau_s", [0.05, 0.2, 1.0])
def test_matches_float64_reference(target, tau_s):
    worst = 0.0
    for seed in range(3):
        img, txt, cap = batch(seed=seed)
        loss = XSampleSigLipLoss(tau_s=tau_s, target=target)(img, txt, f64(10.0), f64(-5.0), caption_embeddings=cap)
        expected = reference_numpy(img, txt, cap, 10.0, -5.0, tau_s, target)
        worst = max(worst, abs(loss.item() - expected) / abs(expected))
    # measured: <= 1.3e-15 relative over all 18 cases (a few ulps); tau_s off by just 1% moves it by 6e-5 to 7e-3
    assert worst <= 1e-14


def test_reference_is_not_degenerate():
    """The two target variants give different losses, and the reference tells them apart."""
    img, txt, cap = batch(seed=1)
    kernel, softmax = (reference_numpy(img, txt, cap, 10.0, -5.0, 0.2, t) for t in TARGETS)
    assert abs(kernel - softmax) > 1e-2 * abs(kernel)


# --- gradients: finite differences -----------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_finite_difference_gradients(target):
    img, txt, cap = batch(n=5, d=4, e=6, seed=3)
    loss_fn = XSampleSigLipLoss(tau_s=0.3, target=target)
    inputs = [x.clone().requires_grad_(True) for x in (img, txt, f64(7.0), f64(-3.0))]
    # measured with central differences at eps 1e-5: |numeric - analytic| <= 1.0e-10 (gradients up to 1.3)
    assert torch.autograd.gradcheck(lambda i, t, s, b: loss_fn(i, t, s, b, caption_embeddings=cap), inputs,
                                    eps=1e-5, atol=1e-9, rtol=1e-7)


# --- the SigLIP limit --------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_small_tau_with_distinct_captions_is_siglip_loss(target):
    worst = 0.0
    for seed in range(3):
        img, txt, cap = batch(n=8, seed=seed)
        ours = value_and_grads(lambda i, t, s, b: XSampleSigLipLoss(tau_s=1e-4, target=target)(
            i, t, s, b, caption_embeddings=cap), img, txt, f64(10.0), f64(-10.0))
        stock = value_and_grads(SigLipLoss(), img, txt, f64(10.0), f64(-10.0))
        worst = max(worst, *(rel_err(a, b) for a, b in zip(ours, stock)))
    # measured: <= 7.3e-16 relative (value and all four gradients): the targets are exactly Id here
    assert worst <= 1e-14


# --- targets -----------------------------------------------------------------------------------------

def test_targets_read_back_match_the_formula():
    """The read-back (used below) is exact: it returns the docstring's targets to ~1e-15."""
    _, _, cap = batch(n=6, e=4, seed=4)
    unit = F.normalize(cap, dim=-1)
    sims = unit @ unit.T
    for target, expected in (("kernel", ((sims - 1) / 0.3).exp()), ("softmax", (sims / 0.3).softmax(dim=1))):
        seen = targets_seen_by_loss(XSampleSigLipLoss(tau_s=0.3, target=target), cap)
        torch.testing.assert_close(seen, expected, rtol=0, atol=1e-14)  # measured 6.7e-16


@pytest.mark.parametrize("tau_s", [0.01, 0.2, 5.0])
def test_kernel_targets_in_unit_interval_with_ones_on_the_diagonal(tau_s):
    _, _, cap = batch(n=8, e=3, seed=5)  # 3-d captions: some pairs are close to opposite (S near -1)
    seen = targets_seen_by_loss(XSampleSigLipLoss(tau_s=tau_s), cap)
    assert (seen >= -1e-15).all() and (seen <= 1 + 1e-15).all()
    torch.testing.assert_close(seen.diagonal(), torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-15)
    off = seen[~torch.eye(8, dtype=torch.bool)]
    assert off.max() < 1  # distinct captions are never full positives


@pytest.mark.parametrize("target", TARGETS)
def test_identical_captions_share_rows_and_are_full_positives(target):
    _, _, cap = batch(n=6, e=16, seed=6)
    cap[3] = cap[1]
    seen = targets_seen_by_loss(XSampleSigLipLoss(tau_s=0.1, target=target), cap)
    exact = dict(rtol=0, atol=1e-15)  # the read-back's own rounding (measured <= 5.6e-17)
    torch.testing.assert_close(seen[1], seen[3], **exact)
    torch.testing.assert_close(seen[:, 1], seen[:, 3], **exact)
    if target == "kernel":
        for value in (seen[1, 3], seen[3, 1], seen[1, 1], seen[3, 3]):
            assert value.item() == pytest.approx(1.0, rel=0, abs=1e-15)
    else:  # the row distribution splits its mass evenly between the two copies
        assert seen[1, 3].item() == pytest.approx(seen[1, 1].item(), rel=0, abs=1e-15)
        torch.testing.assert_close(seen.sum(1), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-14)
    assert seen[1, 2] < 0.5 * seen[1, 1] and seen[0, 1] < 0.5 * seen[0, 0]  # other captions are not positives


def test_float16_table_copy_of_a_caption_is_a_full_positive():
    """A caption and its float16-rounded copy (a table row, at another length) are the same caption: t = 1."""
    _, _, cap = batch(n=5, e=16, seed=7, dtype=torch.float32)
    cap[4] = cap[0].half().float() * 2.5
    cos = F.cosine_similarity(cap[0].double(), cap[4].double(), dim=0).item()
    # not bit-identical (measured 1 - cos = 1.6e-8): exp((S - 1) / tau_s) alone would be 1 - 3.2e-8
    assert 1 - 1e-5 < cos < 1 - 1e-12
    seen = targets_seen_by_loss(XSampleSigLipLoss(tau_s=0.5), cap.double())
    assert seen[0, 4].item() == pytest.approx(1.0, rel=0, abs=1e-15)
    assert seen[4, 0].item() == pytest.approx(1.0, rel=0, abs=1e-15)
    # the rest of the two rows: as close as the float16 rounding of the caption allows (measured 1.3e-5)
    torch.testing.assert_close(seen[4], seen[0], rtol=0, atol=5e-5)
    assert seen[0, 1:4].max() > 0.05  # ... and those entries are not all zero


# --- autocast --------------------------------------------------------------------------------------

# bf16 / fp16 autocast against fp32, at OpenCLIP's largest logit scale (100) and SigLIP's initial bias
# (-10), tau_s 0.05, a batch of 256. Relative (2-norm) errors in units of the autocast dtype's unit
# roundoff u (bf16 2^-8, fp16 2^-11), measured at this seed (kernel; softmax within 1%), bf16 / fp16:
#   loss                     3.3e-5 / 1.6e-5   = 0.0085 u / 0.033 u   -> tolerance 0.1 u
#   image, text grads        4.0e-3 / 5.0e-4   = 1.02 u   / 1.04 u    -> tolerance 2 u
#   logit_scale grad         8.6e-6 / 5.2e-6   = 0.0022 u / 0.011 u   -> tolerance 0.04 u
#   logit_bias grad          7.4e-6 / 3.4e-6   = 0.0019 u / 0.0070 u  -> tolerance 0.025 u
# The feature gradients are bf16/fp16 tensors (the backward's matmuls run in the autocast dtype): ~1 u by
# design. With the fused block accumulating in the autocast dtype instead of fp32 (a wrong-dtype bug)
# the same errors were: loss 0.42 u / inf (fp16 overflows), logit_scale grad 0.67 u / 0.24 u.
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
AMP_TOLERANCE_U = {"loss": 0.1, "image grad": 2.0, "text grad": 2.0, "logit_scale grad": 0.04,
                   "logit_bias grad": 0.025}


def autocast_errors(dtype, target):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(256, 64, generator=g), dim=-1)
    txt = F.normalize(torch.randn(256, 64, generator=g), dim=-1)
    cap = F.normalize(torch.randn(256, 16, generator=g), dim=-1)
    loss_fn = XSampleSigLipLoss(tau_s=0.05, target=target)

    def amp_call(i, t, s, b):
        with torch.autocast("cpu", dtype=dtype):
            return loss_fn(i.to(dtype), t.to(dtype), s, b, caption_embeddings=cap)

    def fp32_call(i, t, s, b):
        return loss_fn(i, t, s, b, caption_embeddings=cap)

    scale, bias = torch.tensor(100.0), torch.tensor(-10.0)
    amp = value_and_grads(amp_call, img, txt, scale, bias)
    ref = value_and_grads(fp32_call, img, txt, scale, bias)
    errors = {name: rel_err(a, b) if torch.isfinite(a).all() else math.inf
              for name, a, b in zip(AMP_TOLERANCE_U, amp, ref)}
    return errors, {name: a.dtype for name, a in zip(AMP_TOLERANCE_U, amp)}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_is_finite_and_close_to_fp32(dtype, target):
    errors, dtypes = autocast_errors(dtype, target)
    assert set(dtypes.values()) == {torch.float32}  # the loss too: accumulated in fp32, never half
    too_large = {name: f"{err:.2e}" for name, err in errors.items()
                 if not err <= AMP_TOLERANCE_U[name] * UNIT_ROUNDOFF[dtype]}  # inf/NaN fail too
    assert not too_large


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_tolerances_reject_half_precision_accumulation(monkeypatch, dtype):
    def accumulate_in_half(image_features, text_features, logit_scale, logit_bias, target):
        mm = blockwise.matmul_dtype(image_features, text_features)
        return sigmoid_module._SoftSigmoidBlock.apply(
            image_features.to(mm), text_features.to(mm), blockwise.as_scalar(logit_scale, image_features, mm),
            blockwise.as_scalar(logit_bias, image_features, mm), target.to(mm))

    monkeypatch.setattr(sigmoid_module, "soft_sigmoid_loss", accumulate_in_half)
    errors, _ = autocast_errors(dtype, "kernel")
    for name in ("loss", "logit_scale grad"):
        assert errors[name] > AMP_TOLERANCE_U[name] * UNIT_ROUNDOFF[dtype], (name, errors[name])


# --- refusals --------------------------------------------------------------------------------------

def test_model_without_logit_bias_is_refused():
    img, txt, cap = batch()
    with pytest.raises(ValueError, match="--siglip"):
        XSampleSigLipLoss()(img, txt, f64(10.0), None, caption_embeddings=cap)
    with pytest.raises(ValueError, match="--siglip"):
        XSampleSigLipLoss()(img, txt, f64(10.0), caption_embeddings=cap)  # logit_bias left out


def test_bad_settings_are_refused():
    for kwargs in ({"tau_s": 0}, {"target": "hard"}, {"dist_impl": "ring"}):
        with pytest.raises(ValueError):
            XSampleSigLipLoss(**kwargs)
    assert XSampleSigLipLoss().dist_impl == SigLipLoss().dist_impl == "bidir"


# --- the fused function against plain autograd -----------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,m", [(5, 5), (7, 3), (3, 9)])
@pytest.mark.parametrize("small_blocks", [False, True])
def test_fused_equals_plain_autograd(monkeypatch, dtype, n, m, small_blocks):
    if small_blocks:
        monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", 4)  # one row per block: the accumulation paths
        assert len(blockwise.blocks(n, m)) == n
    g = torch.Generator().manual_seed(10 * n + m)
    img = torch.randn(n, 6, generator=g, dtype=dtype)
    txt = torch.randn(m, 6, generator=g, dtype=dtype)
    target = torch.rand(n, m, generator=g, dtype=dtype)
    scale, bias = torch.tensor(3.0, dtype=dtype), torch.tensor(-2.0, dtype=dtype)
    fused = value_and_grads(lambda *a: soft_sigmoid_loss(*a, target), img, txt, scale, bias)
    plain = value_and_grads(lambda *a: sigmoid_loss_reference(*a, target), img, txt, scale, bias)
    assert fused[0].dtype == plain[0].dtype == dtype
    # measured: float64 <= 3.8e-16, float32 <= 3.2e-7 relative (value and each gradient)
    tol = 1e-14 if dtype == torch.float64 else 2e-6
    for name, a, b in zip(("loss", "image", "text", "scale", "bias"), fused, plain):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel_err(a, b) <= tol, (name, rel_err(a, b))
