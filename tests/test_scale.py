"""The fused X-Sample loss functions against the plain autograd reference, and per-rank memory that grows
as local x global batch (simulated ranks fed the gathered tensors), measured with the bench's meter."""
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from xsample_openclip import loss as xs
from xsample_openclip.bench import peak_memory, simulated_rank
from xsample_openclip.loss import XSampleLoss, soft_clip_loss, soft_cross_entropy, soft_row_cross_entropy


def unit(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)


def rand_target(n, m, seed, dtype=torch.float64, row_sum=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, m, generator=g, dtype=dtype).softmax(1) * row_sum


@pytest.fixture(params=["one block", "many blocks"])
def blocks(request, monkeypatch):
    if request.param == "many blocks":
        monkeypatch.setattr(xs, "BLOCK_ELEMENTS", 1)
        monkeypatch.setattr(xs, "MAX_BLOCKS", 3)
    return request.param


def reference_square(x, y, s, p):
    return (soft_cross_entropy(s * x @ y.T, p) + soft_cross_entropy(s * y @ x.T, p)) / 2


@pytest.mark.parametrize("row_sum", [1.0, 0.7])  # rows of P need not sum to 1 for the fused identity
def test_fused_square_matches_reference_and_gradcheck(blocks, row_sum):
    x, y = unit(7, 5, 0).requires_grad_(True), unit(7, 5, 1).requires_grad_(True)
    s = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    p = rand_target(7, 7, 2, row_sum=row_sum)
    fused = soft_clip_loss(x, y, s, p.clone())
    ref = reference_square(x, y, s, p)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(fused, (x, y, s)), torch.autograd.grad(ref, (x, y, s))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b, c: soft_clip_loss(a, b, c, p.clone()), (x, y, s))


def test_fused_rows_match_reference_and_gradcheck(blocks):
    x, y = unit(4, 6, 3).requires_grad_(True), unit(10, 6, 4).requires_grad_(True)
    s = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    p = rand_target(4, 10, 5)
    fused = soft_row_cross_entropy(x, y, s, p)
    ref = soft_cross_entropy(s * x @ y.T, p)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b, c: soft_row_cross_entropy(a, b, c, p), (x, y, s))


def test_fused_skips_gradients_nobody_needs_and_survives_retain_graph():
    x, y = unit(6, 4, 6).requires_grad_(True), unit(6, 4, 7)  # columns detached (--local-loss alone)
    s = torch.tensor(5.0, dtype=torch.float64)
    p = rand_target(6, 6, 8)
    loss = soft_row_cross_entropy(x, y, s, p)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)
    ref = torch.autograd.grad(soft_cross_entropy(s * x @ y.T, p), x)[0]
    torch.testing.assert_close(first, ref)


@pytest.mark.parametrize("local_loss", [False, True])
def test_bf16_autocast_matches_fp32(local_loss):
    n, d = 64, 32
    img, txt, cap = (unit(n, d, 9, torch.float32), unit(n, d, 10, torch.float32), unit(n, 16, 11, torch.float32))
    scale = torch.tensor(30.0)
    world = 4 if local_loss else 1
    kw = dict(local_loss=local_loss, gather_with_grad=True, rank=1, world_size=world)

    def run(autocast):
        i, t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        with simulated_rank(1, world, n, torch.device("cpu")), torch.autocast("cpu", dtype=torch.bfloat16,
                                                                               enabled=autocast):
            loss = XSampleLoss(tau_s=0.1, **kw)(i, t, scale, caption_embeddings=cap)
        loss.backward()
        return loss, i.grad, t.grad

    ref, amp = run(False), run(True)
    assert amp[0].dtype == torch.float32 and amp[1].dtype == torch.float32
    assert amp[0].item() == pytest.approx(ref[0].item(), rel=1e-2)
    for a, b in zip(amp[1:], ref[1:]):
        assert (a - b).norm() / b.norm() < 0.05


def test_peak_memory_meter_counts_live_tensors():
    def work():
        a = torch.empty(1 << 20, dtype=torch.uint8)
        b = torch.empty(2 << 20, dtype=torch.uint8)
        del a
        c = torch.empty(1 << 20, dtype=torch.uint8)
        return b, c

    assert peak_memory(work, torch.device("cpu")) == 3 << 20


def _per_rank_peaks(loss_cls, n, world, **extra):
    g = torch.Generator().manual_seed(world)
    img = F.normalize(torch.randn(n, 64, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, 64, generator=g), dim=-1)
    cap = F.normalize(torch.randn(n, 32, generator=g), dim=-1)
    kw = dict(local_loss=True, gather_with_grad=True, rank=world - 1, world_size=world)
    fn = loss_cls(**kw, **extra)

    def step():
        i, t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        if loss_cls is ClipLoss:
            fn(i, t, torch.tensor(20.0)).backward()
        else:
            fn(i, t, torch.tensor(20.0), caption_embeddings=cap).backward()

    with simulated_rank(world - 1, world, n, torch.device("cpu")):
        return peak_memory(step, torch.device("cpu"))


def test_per_rank_memory_grows_as_local_times_global_batch():
    n = 128
    peaks = {w: _per_rank_peaks(XSampleLoss, n, w) for w in (4, 16, 32)}
    clip = {w: _per_rank_peaks(ClipLoss, n, w) for w in (4, 16, 32)}
    for w in peaks:
        big = n * w
        gathered = big * (64 + 64 + 32) * 4
        per_element = (peaks[w] - gathered) / (n * big)
        # a handful of fp32 n x N buffers (target, similarities, block temporaries, and the gradient
        # of the gathered rows), never N x N
        assert 4 <= per_element <= 32, (w, per_element)
        assert peaks[w] <= 1.2 * clip[w], (w, peaks[w], clip[w])
    # 8x the world: ~8x the memory (linear in N for a fixed local batch), not 64x; and far below one
    # global N x N fp32 matrix (what a rank would hold without --local-loss)
    assert 6 <= peaks[32] / peaks[4] <= 9, peaks
    assert peaks[32] < (32 * n) ** 2 * 4 / 4
