"""The image-image X-CLR loss (``--loss xclr``, ``losses/xclr.py``) and the two-view terms of ``--loss xsample``,
against independent float64 references written here: SimCLR's NT-Xent and SupCon's L_out (the limits
tau_s -> 0 of X-CLR with distinct and with class captions), the general formula at a normal tau_s,
gradients (autograd against the references, and gradcheck), and a view-pairing mistake that must show.

The references use SimCLR's own block layout (z = [view 1 of all samples; view 2 of all samples],
positive of i is i + N); the loss takes interleaved rows (2i, 2i + 1 = sample i), built here with
``torch.stack([z1, z2], 1).flatten(0, 1)``, as the training loop's flattening does.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xsample_openclip.losses.softmax import XSampleLoss
from xsample_openclip.losses.xclr import XClrLoss, xclr_loss
from xsample_openclip.patches.views import ViewsModel, flatten_views

T = 0.1       # the paper's logit temperature
SHARP = 1e-4  # tau_s -> 0


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def interleave(z1, z2):
    return torch.stack([z1, z2], dim=1).flatten(0, 1)


# --- independent references ----------------------------------------------------------------------

def nt_xent(z1, z2, temperature):
    """SimCLR's NT-Xent over 2N views (block layout), mean over the 2N anchors."""
    z = torch.cat([z1, z2])
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim = sim - torch.diag(torch.full((2 * n,), math.inf, dtype=z.dtype))  # drop k == i from the denominator
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return -(sim[torch.arange(2 * n), positive] - torch.logsumexp(sim, dim=1)).mean()


def supcon_out(z1, z2, labels, temperature):
    """SupCon's L_out (Khosla et al. 2020, eq. 2): -1/|P(i)| sum_p log softmax_{a != i}, mean over anchors."""
    z = torch.cat([z1, z2])
    lab = torch.cat([labels, labels])
    total = 0.0
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        log_denominator = torch.logsumexp(torch.stack([z[i] @ z[a] / temperature for a in others]), 0)
        positives = [p for p in others if lab[p] == lab[i]]
        total = total - sum(z[i] @ z[p] / temperature - log_denominator for p in positives) / len(positives)
    return total / len(z)


def xclr_reference(z1, z2, captions, tau_s, temperature):
    """The formula at any tau_s, in numpy, block layout: targets softmax_{c != r}(S_tiled / tau_s)."""
    z = np.concatenate([z1.detach().numpy(), z2.detach().numpy()])
    e = captions.numpy() / np.linalg.norm(captions.numpy(), axis=1, keepdims=True)
    e2 = np.concatenate([e, e])
    s, logits = e2 @ e2.T / tau_s, z @ z.T / temperature
    total = 0.0
    for r in range(len(z)):
        keep = np.arange(len(z)) != r
        p = np.exp(s[r, keep] - s[r, keep].max())
        p /= p.sum()
        q = logits[r, keep]
        log_q = q - (np.log(np.exp(q - q.max()).sum()) + q.max())
        total -= (p * log_q).sum()
    return total / len(z)


def soft_clip_reference(img, txt, scale, captions, tau_s):
    """One view's X-Sample image-text term: CE against row softmax(S / tau_s), both directions, mean."""
    e = F.normalize(captions, dim=-1)
    p = torch.softmax(e @ e.T / tau_s, dim=1)
    logits = scale * img @ txt.T
    return (-(p * logits.log_softmax(1)).sum(1).mean() - (p * logits.T.log_softmax(1)).sum(1).mean()) / 2


# --- the limits ---------------------------------------------------------------------------------------

def grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [leaf.grad for leaf in leaves]


def ours(z1, z2, captions, tau_s, temperature=T):
    return xclr_loss(interleave(z1, z2), interleave(z1, z2), captions, captions, tau_s, 1.0 / temperature)


def test_distinct_captions_sharp_targets_is_nt_xent():
    n = 8
    z1, z2, captions = unit(n, 16, seed=1), unit(n, 16, seed=2), unit(n, 32, seed=3)
    value, (g1, g2) = grads(lambda a, b: ours(a, b, captions, SHARP), z1, z2)
    ref, (r1, r2) = grads(lambda a, b: nt_xent(a, b, T), z1, z2)
    assert value == pytest.approx(float(ref), rel=1e-10)
    torch.testing.assert_close(g1, r1, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g2, r2, rtol=1e-9, atol=1e-12)


def test_class_captions_sharp_targets_is_supcon():
    """'a photo of a {class}': identical caption embeddings within a class (4 classes, 3 samples each)."""
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])
    classes = unit(4, 32, seed=4)
    captions = classes[labels]
    z1, z2 = unit(12, 16, seed=5), unit(12, 16, seed=6)
    value, (g1, g2) = grads(lambda a, b: ours(a, b, captions, SHARP), z1, z2)
    ref, (r1, r2) = grads(lambda a, b: supcon_out(a, b, labels, T), z1, z2)
    assert value == pytest.approx(float(ref), rel=1e-10)
    torch.testing.assert_close(g1, r1, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g2, r2, rtol=1e-9, atol=1e-12)
    # and it is not NT-Xent there: the same-class views are positives too
    assert abs(float(ref) - float(nt_xent(z1, z2, T))) > 0.1


def test_normal_tau_s_value_and_gradcheck():
    n, tau_s = 6, 0.3
    z1, z2, captions = unit(n, 8, seed=7), unit(n, 8, seed=8), unit(n, 16, seed=9)
    assert float(ours(z1, z2, captions, tau_s)) == pytest.approx(xclr_reference(z1, z2, captions, tau_s, T), rel=1e-12)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: ours(x, y, captions, tau_s), (a, b), eps=1e-6, atol=1e-8)


def test_view_pairing_mistake_fails_the_comparison():
    """Sample i's view 1 paired with sample perm(i)'s view 2: the NT-Xent comparison above must fail."""
    n = 8
    z1, z2, captions = unit(n, 16, seed=1), unit(n, 16, seed=2), unit(n, 32, seed=3)
    perm = torch.roll(torch.arange(n), 1)
    mispaired = float(ours(z1, z2[perm], captions, SHARP))
    correct = float(nt_xent(z1, z2, T))
    assert mispaired != pytest.approx(correct, rel=1e-3)
    # block layout fed as if interleaved (the other layout mistake) fails it too
    block = torch.cat([z1, z2])
    assert float(xclr_loss(block, block, captions, captions, SHARP, 1 / T)) != pytest.approx(correct, rel=1e-3)


# --- the module: gather-free paths, temperature, validation twin ------------------------------------

def test_module_fixed_temperature_ignores_logit_scale_but_keeps_it_in_the_graph():
    n = 5
    z1, z2, captions = unit(n, 8, seed=11), unit(n, 8, seed=12), unit(n, 16, seed=13)
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    out = XClrLoss(tau_s=0.2, temperature=T)(interleave(z1, z2), None, scale, output_dict=True,
                                             caption_embeddings=captions)
    assert list(out) == ["xclr_loss"]
    assert float(out["xclr_loss"].detach()) == pytest.approx(xclr_reference(z1, z2, captions, 0.2, T), rel=1e-12)
    out["xclr_loss"].backward()
    assert scale.grad is not None and float(scale.grad) == 0.0  # used (DDP), never moved


def test_module_learned_temperature_uses_logit_scale():
    n = 5
    z1, z2, captions = unit(n, 8, seed=11), unit(n, 8, seed=12), unit(n, 16, seed=13)
    scale = torch.tensor(4.0, dtype=torch.float64)
    value = XClrLoss(tau_s=0.2, temperature=None)(interleave(z1, z2), None, scale, caption_embeddings=captions)
    assert float(value) == pytest.approx(xclr_reference(z1, z2, captions, 0.2, 1 / 4.0), rel=1e-12)


def test_module_refuses_one_view_in_training_and_duplicates_it_for_validation():
    z, captions = unit(4, 8, seed=14), unit(4, 16, seed=15)
    loss = XClrLoss(tau_s=0.2)
    with pytest.raises(ValueError, match="--xsample-views 2"):
        loss(z, None, None, caption_embeddings=captions)
    with pytest.raises(ValueError, match="interleaved views"):
        loss(unit(6, 8), None, None, caption_embeddings=captions)
    twin = loss.single_process()
    assert float(twin(z, None, None, caption_embeddings=captions)) == pytest.approx(
        xclr_reference(z, z, captions, 0.2, T), rel=1e-12)
    assert not loss.single_view_twice  # the training loss is unchanged


# --- --loss xsample with two views --------------------------------------------------------------------

def test_xsample_two_views_image_text_term_is_the_mean_over_views_and_image_term_is_xclr():
    n, tau_s, w = 6, 0.25, 0.5
    z1, z2, txt, captions = unit(n, 8, seed=21), unit(n, 8, seed=22), unit(n, 8, seed=23), unit(n, 16, seed=24)
    scale = torch.tensor(5.0, dtype=torch.float64)
    out = XSampleLoss(tau_s=tau_s, image_weight=w)(interleave(z1, z2), txt, scale, output_dict=True,
                                                   caption_embeddings=captions)
    per_view = [soft_clip_reference(z, txt, 5.0, captions, tau_s) for z in (z1, z2)]
    assert float(out["xsample_loss"]) == pytest.approx(float(sum(per_view) / 2), rel=1e-10)
    assert float(out["xsample_image_loss"]) == pytest.approx(w * xclr_reference(z1, z2, captions, tau_s, 1 / 5.0),
                                                             rel=1e-10)
    # one view keeps the one-view loss: identical views give the same image-text term
    one = XSampleLoss(tau_s=tau_s)(z1, txt, scale, caption_embeddings=captions)
    same = XSampleLoss(tau_s=tau_s)(interleave(z1, z1), txt, scale, caption_embeddings=captions)
    assert float(same) == pytest.approx(float(one), rel=1e-12)
    assert float(one) == pytest.approx(float(per_view[0]), rel=1e-10)


# --- the training loop's flattening --------------------------------------------------------------------

def test_views_model_flattens_interleaved_and_refuses_one_view():
    seen = {}

    def model(image, text):
        seen["image"], seen["text"] = image, text
        return {}

    images = torch.arange(3 * 2 * 1 * 2 * 2, dtype=torch.float32).reshape(3, 2, 1, 2, 2)
    text = torch.zeros(3, 4)
    ViewsModel(model)(images, text)
    assert seen["image"].shape == (6, 1, 2, 2) and seen["text"] is text
    for i in range(3):
        for v in range(2):
            assert torch.equal(seen["image"][2 * i + v], images[i, v])
    with pytest.raises(RuntimeError, match="two-view data path is not active"):
        flatten_views(images[:, 0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_the_loss_is_fp32_and_close(dtype):
    """Under AMP (OpenCLIP calls the loss inside autocast) the loss is fp32, finite and close to fp32's, with
    a sharp target (tau_s = 0.01); its gradient is finite."""
    n = 16
    z = interleave(unit(n, 32, seed=31), unit(n, 32, seed=32)).float().requires_grad_(True)
    captions = unit(n, 64, seed=33).float()
    exact = XClrLoss(tau_s=0.01)(z, None, None, caption_embeddings=captions)
    with torch.autocast("cpu", dtype=dtype):
        amp = XClrLoss(tau_s=0.01)(z, None, None, caption_embeddings=captions)
    assert amp.dtype == torch.float32 and torch.isfinite(amp)
    assert float(amp.detach()) == pytest.approx(float(exact.detach()), rel=2e-2)
    (grad,) = torch.autograd.grad(amp, z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
