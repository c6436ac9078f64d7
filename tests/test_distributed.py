"""Gloo processes against one process on the concatenated batch, for both X-Sample losses, world sizes 2 and 3.

Softmax loss (``XSampleLoss``), in every OpenCLIP gather mode; the expected relations are ClipLoss's own:
- global loss (no --local-loss): every rank's loss is the full-batch loss;
- --local-loss: the mean of the rank losses is the full-batch loss;
- gradients reaching a rank's own features: the full-batch gradient without --gather-with-grad and
  without --local-loss; world_size x it with --gather-with-grad (the backward of all_gather sums);
  with --local-loss alone, only the local rows carry gradient (columns are detached), checked against
  that reference computed in one process.

Sigmoid loss (``XSampleSigLipLoss``, kernel and softmax targets) in every SigLipLoss ``dist_impl``
(bidir, shift, reduce, gather), checked in the same run against the same relations for stock
``SigLipLoss``. With N = W n samples, W ranks of n, per-pair terms l_ij = softplus(z_ij) - t_ij z_ij and
the single-process loss L = sum_ij l_ij / N:
- rank r's loss is its rows' share, L_r = sum_{i in r, all j} l_ij / n, so mean_r L_r = L;
- every exchange of text features carries gradient back to the rank that owns them, so the gradient
  reaching rank r's image and text features is d(sum_r' L_r')/d(features of r) = W x dL/d(those rows);
- logit_scale and logit_bias are replicated: rank r gets dL_r/ds, dL_r/db; their mean over ranks (what
  DDP's all-reduce averaging applies) is dL/ds, dL/db.
The single-process side is the formula in plain float64 autograd, not the loss under test. World size 2
runs bidir's remainder exchange only, world size 3 its bidirectional loop only (divmod(W - 1, 2)).
"""
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from xsample_openclip.losses import XSampleSigLipLoss
from xsample_openclip.losses.fused_softmax import masked_soft_cross_entropy, soft_cross_entropy
from xsample_openclip.losses.graph import softmax_targets as soft_targets
from xsample_openclip.losses.softmax import XSampleLoss

WORLDS = (2, 3)
PER_RANK = 3
MODES = list(itertools.product([False, True], [False, True]))  # (local_loss, gather_with_grad)
SETTINGS = dict(tau_s=0.2, clip_weight=0.2, image_weight=0.5)
DIST_IMPLS = ("bidir", "shift", "reduce", "gather")
SIGMOID_LOSSES = ("xsample-kernel", "xsample-softmax", "siglip")
SIGMOID_TAU = 0.3
# Float64 throughout. Measured worst deviation from the one-process references, relative to the largest
# entry compared (values and gradients, both world sizes, every mode and dist_impl): softmax loss 7.2e-16,
# sigmoid losses 2.0e-15 (XSample kernel at world size 3), stock SigLipLoss 3.4e-16. A text gradient
# without the remote blocks' share is off by more than 1e-3 (test_sigmoid_reference_is_not_trivial).
EXACT = dict(rtol=1e-13, atol=1e-14)


def full_batch(world, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = world * PER_RANK
    img = F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)
    cap = F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1)
    return img, txt, cap, torch.tensor(11.0, dtype=torch.float64)


def sigmoid_loss_fn(kind, rank=0, world_size=1, dist_impl=None):
    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size, dist_impl=dist_impl)
    target = kind.split("-")[1]
    return XSampleSigLipLoss(tau_s=SIGMOID_TAU, target=target, rank=rank, world_size=world_size,
                             dist_impl=dist_impl)


SIGMOID_BIAS = -4.0


def _run_world(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    img, txt, cap, scale = full_batch(world)
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    results = {}
    for local_loss, gather_with_grad in MODES:
        loss_fn = XSampleLoss(**SETTINGS, local_loss=local_loss, gather_with_grad=gather_with_grad,
                              rank=rank, world_size=world)
        i, t = img[rows].clone().requires_grad_(True), txt[rows].clone().requires_grad_(True)
        loss = loss_fn(i, t, scale, caption_embeddings=cap[rows])
        loss.backward()
        results[(local_loss, gather_with_grad)] = (loss.detach(), i.grad, t.grad)
    for dist_impl, kind in itertools.product(DIST_IMPLS, SIGMOID_LOSSES):
        loss_fn = sigmoid_loss_fn(kind, rank, world, dist_impl)
        i, t = img[rows].clone().requires_grad_(True), txt[rows].clone().requires_grad_(True)
        s = scale.clone().requires_grad_(True)
        b = torch.tensor(SIGMOID_BIAS, dtype=torch.float64, requires_grad=True)
        extra = {} if kind == "siglip" else {"caption_embeddings": cap[rows]}
        loss = loss_fn(i, t, s, b, **extra)
        loss.backward()
        results[(dist_impl, kind)] = (loss.detach(), i.grad, t.grad, s.grad, b.grad)
    torch.save(results, f"{out_dir}/world{world}_rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _worker(rank, out_dir):
    """One spawn for every world size (starting processes is what costs): the largest group first, then
    the first ranks form each smaller one in a fresh process group."""
    for world in sorted(WORLDS, reverse=True):
        if rank < world:
            _run_world(rank, world, f"{out_dir}/init{world}", out_dir)


@pytest.fixture(scope="module")
def all_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    mp.start_processes(_worker, args=(str(tmp),), nprocs=max(WORLDS), join=True, start_method="spawn")
    return {world: [torch.load(tmp / f"world{world}_rank{r}.pt") for r in range(world)] for world in WORLDS}


@pytest.fixture(params=WORLDS, ids=lambda w: f"world{w}")
def ranks(request, all_ranks):
    """(world size, each rank's results)."""
    return request.param, all_ranks[request.param]


# --- softmax loss ----------------------------------------------------------------------------------

def single_process(world, local_rows_only_for=None):
    """The full-batch loss and its gradients; or, for ``--local-loss`` without
    ``--gather-with-grad``, rank r's loss written out by hand: live rows against detached columns."""
    img, txt, cap, scale = full_batch(world)
    if local_rows_only_for is None:
        i, t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        loss = XSampleLoss(**SETTINGS)(i, t, scale, caption_embeddings=cap)
        loss.backward()
        return loss.detach(), i.grad, t.grad
    start = local_rows_only_for * PER_RANK
    rows = slice(start, start + PER_RANK)
    i, t = img[rows].clone().requires_grad_(True), txt[rows].clone().requires_grad_(True)
    target = soft_targets(cap[rows], cap, SETTINGS["tau_s"], start, SETTINGS["clip_weight"])
    contrastive = (soft_cross_entropy(scale * i @ txt.T, target)
                   + soft_cross_entropy(scale * t @ img.T, target)) / 2
    image_target = soft_targets(cap[rows], cap, SETTINGS["tau_s"], start, mask_self=True)
    image_logits = scale * i @ img.T
    image_logits[torch.arange(PER_RANK), torch.arange(PER_RANK) + start] = float("-inf")
    loss = contrastive + SETTINGS["image_weight"] * masked_soft_cross_entropy(image_logits, image_target)
    loss.backward()
    return loss.detach(), i.grad, t.grad


@pytest.mark.parametrize("local_loss,gather_with_grad", MODES)
def test_softmax_ranks_match_one_process(ranks, local_loss, gather_with_grad):
    world, rank_results = ranks
    full_loss, full_gi, full_gt = single_process(world)
    rank_losses = [res[(local_loss, gather_with_grad)][0] for res in rank_results]
    if local_loss:
        torch.testing.assert_close(torch.stack(rank_losses).mean(), full_loss, **EXACT)
    else:
        for loss in rank_losses:
            torch.testing.assert_close(loss, full_loss, **EXACT)

    for r, res in enumerate(rank_results):
        _, gi, gt = res[(local_loss, gather_with_grad)]
        rows = slice(r * PER_RANK, (r + 1) * PER_RANK)
        if gather_with_grad:
            expected_i, expected_t = world * full_gi[rows], world * full_gt[rows]
        elif not local_loss:
            expected_i, expected_t = full_gi[rows], full_gt[rows]
        else:
            _, expected_i, expected_t = single_process(world, local_rows_only_for=r)
        torch.testing.assert_close(gi, expected_i, **EXACT)
        torch.testing.assert_close(gt, expected_t, **EXACT)


# --- sigmoid losses --------------------------------------------------------------------------------

def sigmoid_reference(world, kind):
    """The one-process side, from the formula in plain float64 autograd: per-pair terms l_ij, and
    a function giving (loss, grads of image, text, scale, bias) for any set of rows' share of them."""
    img, txt, cap, scale = full_batch(world)
    n_all = len(img)
    sims = cap @ cap.T  # unit captions
    if kind == "siglip":
        target = torch.eye(n_all, dtype=torch.float64)
    elif kind == "xsample-kernel":
        target = ((sims - 1) / SIGMOID_TAU).exp()
    else:
        target = (sims / SIGMOID_TAU).softmax(dim=1)

    def share(rows, per):
        i, t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        s = scale.clone().requires_grad_(True)
        b = torch.tensor(SIGMOID_BIAS, dtype=torch.float64, requires_grad=True)
        z = s * i @ t.T + b
        pairs = F.softplus(z) - target * z
        loss = pairs[rows].sum() / per
        loss.backward()
        return loss.detach(), i.grad, t.grad, s.grad, b.grad

    return share


@pytest.mark.parametrize("kind", SIGMOID_LOSSES)
@pytest.mark.parametrize("dist_impl", DIST_IMPLS)
def test_sigmoid_ranks_match_one_process(ranks, dist_impl, kind):
    world, rank_results = ranks
    share = sigmoid_reference(world, kind)
    full_loss, full_gi, full_gt, full_gs, full_gb = share(slice(None), world * PER_RANK)
    results = [res[(dist_impl, kind)] for res in rank_results]

    # mean over ranks of the rank losses, and of the replicated parameters' gradients, is the one-process one
    torch.testing.assert_close(torch.stack([res[0] for res in results]).mean(), full_loss, **EXACT)
    torch.testing.assert_close(torch.stack([res[3] for res in results]).mean(), full_gs, **EXACT)
    torch.testing.assert_close(torch.stack([res[4] for res in results]).mean(), full_gb, **EXACT)
    for r, (loss, gi, gt, gs, gb) in enumerate(results):
        rows = slice(r * PER_RANK, (r + 1) * PER_RANK)
        # rank r's loss and its scale/bias gradients: its rows' share of the pairs, divided by n
        own_loss, _, _, own_gs, own_gb = share(rows, PER_RANK)
        torch.testing.assert_close(loss, own_loss, **EXACT)
        torch.testing.assert_close(gs, own_gs, **EXACT)
        torch.testing.assert_close(gb, own_gb, **EXACT)
        # features: W x the one-process gradient of those rows (the sum over every rank's loss)
        torch.testing.assert_close(gi, world * full_gi[rows], **EXACT)
        torch.testing.assert_close(gt, world * full_gt[rows], **EXACT)


def test_sigmoid_reference_is_not_trivial(ranks):
    """The relations above tell the losses apart: the targets differ, and remote blocks carry gradient."""
    world, rank_results = ranks
    losses = {kind: rank_results[0][("bidir", kind)][0] for kind in SIGMOID_LOSSES}
    assert len({round(v.item(), 6) for v in losses.values()}) == len(SIGMOID_LOSSES)
    _, _, local_gt, _, _ = sigmoid_reference(world, "xsample-kernel")(slice(0, PER_RANK), PER_RANK)
    # rank 0's text gradient from its own loss alone (exchanges without gradient) is far from what reaches it
    assert (rank_results[0][("bidir", "xsample-kernel")][2] - local_gt[:PER_RANK]).abs().max() > 1e-3
