"""The X-Sample loss against independent references: by hand, float64 numpy, finite differences, limits;
under bf16/fp16 autocast its value and gradients stay within measured multiples of the autocast dtype's
unit roundoff of the fp32 ones, and those tolerances reject a loss that accumulates in half precision."""
import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from xsample_openclip.losses import fused_softmax, graph
from xsample_openclip.losses.graph import softmax_targets as soft_targets
from xsample_openclip.losses.softmax import XSampleLoss


def unit(x):
    return F.normalize(x, dim=-1)


def batch(n=6, d=8, e=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    img = unit(torch.randn(n, d, generator=g, dtype=dtype))
    txt = unit(torch.randn(n, d, generator=g, dtype=dtype))
    cap = unit(torch.randn(n, e, generator=g, dtype=dtype))
    return img, txt, cap


def reference_numpy(img, txt, cap, scale, tau_s, clip_weight=0.0, image_weight=0.0):
    """Straight from the formula, in float64 loops."""
    img, txt, cap = (np.asarray(t, dtype=np.float64) for t in (img, txt, cap))
    n = len(img)

    def softmax(v):
        v = v - v.max()
        return np.exp(v) / np.exp(v).sum()

    def ce(p, logits):
        logits = logits - logits.max()
        logp = logits - np.log(np.exp(logits).sum())
        return -sum(pi * lp for pi, lp in zip(p, logp) if pi > 0)

    total_i2t = total_t2i = total_img = 0.0
    for i in range(n):
        sims = np.array([cap[i] @ cap[j] for j in range(n)])
        p = softmax(sims / tau_s)
        p_mixed = (1 - clip_weight) * p + clip_weight * np.eye(n)[i]
        total_i2t += ce(p_mixed, scale * np.array([img[i] @ txt[j] for j in range(n)]))
        total_t2i += ce(p_mixed, scale * np.array([txt[i] @ img[j] for j in range(n)]))
        others = [j for j in range(n) if j != i]
        if others:
            q = softmax(sims[others] / tau_s)
            total_img += ce(q, scale * np.array([img[i] @ img[j] for j in others]))
    loss = (total_i2t + total_t2i) / (2 * n)
    if image_weight and n > 1:
        loss += image_weight * total_img / n
    return loss


def test_hand_computed_two_samples():
    # captions at cosine 0.6, tau_s 0.5: target rows softmax([2, 1.2]); features at right angles, scale 1
    cap = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = img.clone()
    p_same = math.exp(2) / (math.exp(2) + math.exp(1.2))
    # logits rows are [1, 0] / [0, 1]: log-softmax of the matching entry is -log(1 + e^-1)
    lp_match, lp_other = -math.log(1 + math.exp(-1)), -1 - math.log(1 + math.exp(-1))
    expected = -(p_same * lp_match + (1 - p_same) * lp_other)
    loss = XSampleLoss(tau_s=0.5)(img, txt, torch.tensor(1.0, dtype=torch.float64), caption_embeddings=cap)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("clip_weight,image_weight,tau_s", [(0.0, 0.0, 0.1), (0.3, 0.0, 0.5), (0.0, 0.7, 0.05),
                                                             (0.25, 0.5, 1.0)])
def test_matches_float64_reference(clip_weight, image_weight, tau_s):
    img, txt, cap = batch(n=7, seed=1)
    loss_fn = XSampleLoss(tau_s=tau_s, clip_weight=clip_weight, image_weight=image_weight)
    out = loss_fn(img, txt, torch.tensor(12.0, dtype=torch.float64), caption_embeddings=cap, output_dict=True)
    assert set(out) == ({"xsample_loss", "xsample_image_loss"} if image_weight else {"xsample_loss"})
    expected = reference_numpy(img, txt, cap, 12.0, tau_s, clip_weight, image_weight)
    # measured: relative error <= 2.2e-16 (one ulp) over these four settings; 1e-14 leaves room for another
    # BLAS's summation order, while tau_s off by just 1% already moves the loss by 3.7e-5 to 1.1e-3
    assert sum(out.values()).item() == pytest.approx(expected, rel=1e-14, abs=0)


def test_finite_difference_gradients():
    img, txt, cap = batch(n=5, seed=2)
    loss_fn = XSampleLoss(tau_s=0.2, clip_weight=0.1, image_weight=0.5)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda i, t, s: loss_fn(i, t, s, caption_embeddings=cap), (img, txt, scale), eps=1e-6, atol=1e-7)


def test_small_tau_with_distinct_captions_is_clip_loss():
    img, txt, cap = batch(n=8, seed=3)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale = torch.tensor(20.0, dtype=torch.float64)
    xs = XSampleLoss(tau_s=1e-4)(img, txt, scale, caption_embeddings=cap)
    grads_xs = torch.autograd.grad(xs, (img, txt))
    clip = ClipLoss()(img, txt, scale)
    grads_clip = torch.autograd.grad(clip, (img, txt))
    assert xs.item() == pytest.approx(clip.item(), rel=1e-10)
    for a, b in zip(grads_xs, grads_clip):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_full_clip_weight_is_clip_loss_at_any_tau():
    img, txt, cap = batch(seed=4)
    scale = torch.tensor(5.0, dtype=torch.float64)
    xs = XSampleLoss(tau_s=3.0, clip_weight=1.0)(img, txt, scale, caption_embeddings=cap)
    assert xs.item() == pytest.approx(ClipLoss()(img, txt, scale).item(), rel=1e-12)


def test_duplicate_captions_share_the_target_evenly():
    _, _, cap = batch(n=5, seed=5)
    cap[3] = cap[1]
    target = soft_targets(cap, cap, tau_s=1e-4)
    torch.testing.assert_close(target[1], target[3])
    expected = torch.zeros(5, dtype=target.dtype)
    expected[[1, 3]] = 0.5
    torch.testing.assert_close(target[1], expected)
    assert target.sum(1).allclose(torch.ones(5, dtype=target.dtype))


@pytest.mark.parametrize("clip_weight", [0.0, 0.5])
def test_repeated_captions_with_their_own_text_features_make_clip_loss_the_small_tau_limit(clip_weight):
    """Why X-Sample trains exactly like CLIP on captions that repeat verbatim (the shapes `pair` style,
    docs/studies/results.md §8): identical captions give identical text features, so in CLIP's one-hot CE the
    columns of a caption's copies carry equal logits and the rows of its copies are equal; summed over a
    caption's copies, one-hot and the uniform target over the copies give the same loss and gradients,
    and so does any mix of the two (the hard-target weight, 0.5 by default)."""
    g = torch.Generator().manual_seed(11)
    groups = torch.tensor([0, 2, 0, 1, 2, 2, 3, 1])  # four captions, three of them repeated
    img = unit(torch.randn(8, 8, generator=g, dtype=torch.float64)).requires_grad_(True)
    txt_of_caption = unit(torch.randn(4, 8, generator=g, dtype=torch.float64)).requires_grad_(True)
    cap = unit(torch.randn(4, 5, generator=g, dtype=torch.float64))[groups]
    scale = torch.tensor(12.0, dtype=torch.float64)
    xs = XSampleLoss(tau_s=1e-4, clip_weight=clip_weight)(img, txt_of_caption[groups], scale, caption_embeddings=cap)
    clip = ClipLoss()(img, txt_of_caption[groups], scale)
    assert xs.item() == pytest.approx(clip.item(), rel=1e-10)
    for a, b in zip(torch.autograd.grad(xs, (img, txt_of_caption)), torch.autograd.grad(clip, (img, txt_of_caption))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # the equality needs the copies' text features to be equal: with distinct ones it breaks
    txt_distinct = unit(torch.randn(8, 8, generator=g, dtype=torch.float64))
    apart = XSampleLoss(tau_s=1e-4, clip_weight=clip_weight)(img.detach(), txt_distinct, scale, caption_embeddings=cap)
    assert abs(apart.item() - ClipLoss()(img.detach(), txt_distinct, scale).item()) > 1e-3


def test_both_directions_use_row_targets_and_are_symmetric():
    img, txt, cap = batch(seed=6)
    scale = torch.tensor(9.0, dtype=torch.float64)
    loss_fn = XSampleLoss(tau_s=0.3)
    assert loss_fn(img, txt, scale, caption_embeddings=cap).item() == pytest.approx(
        loss_fn(txt, img, scale, caption_embeddings=cap).item(), rel=1e-12)
    # the text->image term must use row-normalised targets, not the transpose of the row softmax
    target = soft_targets(cap, cap, 0.3).double()
    logits_t = scale * txt @ img.T
    t2i = -(target * logits_t.log_softmax(1)).sum(1).mean()
    i2t = -(target * (scale * img @ txt.T).log_softmax(1)).sum(1).mean()
    assert loss_fn(img, txt, scale, caption_embeddings=cap).item() == pytest.approx(((i2t + t2i) / 2).item())


def test_targets_are_fp32_without_grad_under_autocast():
    _, _, cap = batch(n=16, d=4, e=32, seed=7, dtype=torch.float32)
    fp32 = soft_targets(cap, cap, 0.1)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            target = soft_targets(cap.clone().requires_grad_(True), cap, 0.1)
        assert target.dtype == torch.float32 and not target.requires_grad
        # bit for bit the fp32 graph: without autocast_off the similarity matmul runs in half precision
        # (measured here: the target then is bf16, or after a cast back, 1.9e-3 (bf16) / 1.9e-4 (fp16) off)
        assert torch.equal(target, fp32)


# Autocast: the loss value and its gradients against fp32, at OpenCLIP's largest logit scale (100), a
# sharp graph (tau_s 0.05) and a batch large enough (256) for half-precision accumulation to show.
# Errors are relative (2-norm) and given in units of the autocast dtype's unit roundoff u (bf16 2^-8,
# fp16 2^-11). Measured at this seed, bf16 / fp16:
#   loss                       3.5e-5 / 4.6e-6   = 0.009 u / 0.009 u   -> tolerance 0.03 u
#   image, text feature grads  1.0e-2 / 1.3e-3   = 2.6 u   / 2.7 u     -> tolerance 4 u
#   logit-scale grad           2.1e-4 / 4.7e-5   = 0.05 u  / 0.10 u    -> tolerance 0.2 u
# The feature gradients are bf16/fp16 tensors by design (the backward's g @ y runs in the autocast dtype),
# hence a few u; the loss and the logit-scale gradient are accumulated in fp32 and only see rounded logits.
# The same check with the fused loss accumulating in the autocast dtype (a wrong-dtype bug, see
# test_autocast_tolerances_reject_half_precision_accumulation) measured, bf16 / fp16:
#   loss 2.3e-3 / 8.8e-5 (20x / 6x its tolerance), feature grads 2.2e-2-2.7e-2 / 2.9e-3-3.6e-3 (1.4-1.8x),
#   logit-scale grad 9.3e-3 / 6.3e-4 (12x / 6x).
# A graph built without autocast_off (targets from a half-precision matmul) is caught exactly by
# test_targets_are_fp32_without_grad_under_autocast; here it moved the bf16 loss by 2.0e-4 (1.7x).
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
AUTOCAST_TOLERANCE_U = {"loss": 0.03, "image grad": 4.0, "text grad": 4.0, "logit_scale grad": 0.2}


def autocast_errors(dtype):
    """Relative errors of (loss, image grad, text grad, logit_scale grad) under autocast vs fp32."""
    img, txt, cap = batch(n=256, d=64, e=16, seed=0, dtype=torch.float32)
    loss_fn = XSampleLoss(tau_s=0.05, image_weight=0.5)

    def run(autocast_dtype):
        i, t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        scale = torch.tensor(100.0, requires_grad=True)
        if autocast_dtype is None:
            loss = loss_fn(i, t, scale, caption_embeddings=cap)
        else:
            with torch.autocast("cpu", dtype=autocast_dtype):
                loss = loss_fn(i.to(autocast_dtype), t.to(autocast_dtype), scale, caption_embeddings=cap)
            assert loss.dtype == torch.float32
        loss.backward()  # outside autocast, as OpenCLIP's training step does
        return loss.detach(), i.grad, t.grad, scale.grad

    errors = {}
    for name, a, b in zip(AUTOCAST_TOLERANCE_U, run(dtype), run(None)):
        assert a is not None and a.dtype == torch.float32 and torch.isfinite(a).all(), name
        errors[name] = ((a - b).norm() / b.norm()).item()
    return errors


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_matches_fp32(dtype):
    errors = autocast_errors(dtype)
    too_large = {name: f"{err:.2e} > {AUTOCAST_TOLERANCE_U[name] * UNIT_ROUNDOFF[dtype]:.2e}"
                 for name, err in errors.items() if err > AUTOCAST_TOLERANCE_U[name] * UNIT_ROUNDOFF[dtype]}
    assert not too_large


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_tolerances_reject_half_precision_accumulation(monkeypatch, dtype):
    """The tolerances above are sharp: a fused loss whose logsumexp, target and scale live in the autocast
    dtype instead of fp32 (one wrong dtype in ``_prepare``) fails every one of the four checks."""
    def prepare_in_half(x, y, scale, target):
        mm_dtype = fused_softmax._matmul_dtype(x, y)
        return x.to(mm_dtype), y.to(mm_dtype), fused_softmax.as_scalar(scale, x, mm_dtype), target.to(mm_dtype)

    monkeypatch.setattr(fused_softmax, "_prepare", prepare_in_half)
    errors = autocast_errors(dtype)
    for name, err in errors.items():
        assert err > AUTOCAST_TOLERANCE_U[name] * UNIT_ROUNDOFF[dtype], (name, err)


def test_targets_under_autocast_without_autocast_off_are_caught(monkeypatch):
    """The exact-equality check above fails when the graph is built under autocast (autocast_off removed)."""
    _, _, cap = batch(n=16, d=4, e=32, seed=7, dtype=torch.float32)
    fp32 = soft_targets(cap, cap, 0.1)
    monkeypatch.setattr(graph, "autocast_off", lambda device: contextlib.nullcontext())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        target = soft_targets(cap, cap, 0.1)
    assert target.dtype != torch.float32 or not torch.equal(target, fp32)
    assert (target.float() - fp32).abs().max() > 1e-3


def test_gradient_accumulation_protocol_equals_full_batch():
    """OpenCLIP's --accum-freq calls the loss once per micro-batch on the concatenated features,
    with only that micro-batch carrying gradient; the summed gradients must equal the full batch's."""
    img, txt, cap = batch(n=8, seed=9)
    scale = torch.tensor(10.0, dtype=torch.float64)
    loss_fn = XSampleLoss(tau_s=0.2, clip_weight=0.2, image_weight=0.3)
    full_img, full_txt = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    loss_fn(full_img, full_txt, scale, caption_embeddings=cap).backward()

    micro = 4
    acc_img, acc_txt = torch.zeros_like(img), torch.zeros_like(txt)
    for j in range(0, 8, micro):
        live_img = img[j:j + micro].clone().requires_grad_(True)
        live_txt = txt[j:j + micro].clone().requires_grad_(True)
        cat_img = torch.cat([img[:j], live_img, img[j + micro:]])
        cat_txt = torch.cat([txt[:j], live_txt, txt[j + micro:]])
        loss_fn(cat_img, cat_txt, scale, caption_embeddings=cap).backward()
        acc_img[j:j + micro] = live_img.grad
        acc_txt[j:j + micro] = live_txt.grad
    torch.testing.assert_close(acc_img, full_img.grad)
    torch.testing.assert_close(acc_txt, full_txt.grad)


def test_batch_of_one_is_finite():
    img, txt, cap = batch(n=1, seed=10)
    out = XSampleLoss(tau_s=0.1, image_weight=1.0)(img, txt, torch.tensor(30.0, dtype=torch.float64),
                                                    caption_embeddings=cap, output_dict=True)
    assert set(out) == {"xsample_loss"}
    assert out["xsample_loss"].item() == pytest.approx(0.0, abs=1e-12)


def test_missing_tokens_says_the_hook_is_not_active():
    img, txt, _ = batch()
    with pytest.raises(RuntimeError, match="hook is not active"):
        XSampleLoss()(img, txt, torch.tensor(1.0))


def test_rejects_logit_bias_and_bad_settings():
    img, txt, cap = batch()
    with pytest.raises(ValueError, match="SigLIP"):
        XSampleLoss()(img, txt, torch.tensor(1.0), logit_bias=torch.tensor(-10.0), caption_embeddings=cap)
    for kwargs in ({"tau_s": 0}, {"clip_weight": 1.5}, {"image_weight": -1}):
        with pytest.raises(ValueError):
            XSampleLoss(**kwargs)
