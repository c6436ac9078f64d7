"""Two gloo processes against one process on the concatenated batch, in every OpenCLIP gather mode.

Expected relations are OpenCLIP ClipLoss's own semantics:
- global loss (no --local-loss): every rank's loss is the full-batch loss;
- --local-loss: the mean of the rank losses is the full-batch loss;
- gradients reaching a rank's own features: the full-batch gradient without --gather-with-grad and
  without --local-loss; world_size x it with --gather-with-grad (the backward of all_gather sums);
  with --local-loss alone, only the local rows carry gradient (columns are detached), checked against
  that reference computed in one process.
"""
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xsample_openclip.losses.fused_softmax import masked_soft_cross_entropy, soft_cross_entropy
from xsample_openclip.losses.graph import softmax_targets as soft_targets
from xsample_openclip.losses.softmax import XSampleLoss

WORLD = 2
PER_RANK = 3
MODES = list(itertools.product([False, True], [False, True]))  # (local_loss, gather_with_grad)
SETTINGS = dict(tau_s=0.2, clip_weight=0.2, image_weight=0.5)


def full_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    n = WORLD * PER_RANK
    img = torch.nn.functional.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)
    cap = torch.nn.functional.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1)
    return img, txt, cap, torch.tensor(11.0, dtype=torch.float64)


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    img, txt, cap, scale = full_batch()
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    results = {}
    for local_loss, gather_with_grad in MODES:
        loss_fn = XSampleLoss(**SETTINGS, local_loss=local_loss, gather_with_grad=gather_with_grad,
                              rank=rank, world_size=WORLD)
        i, t = img[rows].clone().requires_grad_(True), txt[rows].clone().requires_grad_(True)
        loss = loss_fn(i, t, scale, caption_embeddings=cap[rows])
        loss.backward()
        results[(local_loss, gather_with_grad)] = (loss.detach(), i.grad, t.grad)
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True,
                       start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def single_process(local_rows_only_for=None):
    """The full-batch loss and its gradients; or, for ``--local-loss`` without
    ``--gather-with-grad``, rank r's loss written out by hand: live rows against detached columns."""
    img, txt, cap, scale = full_batch()
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
def test_two_ranks_match_one_process(rank_results, local_loss, gather_with_grad):
    full_loss, full_gi, full_gt = single_process()
    rank_losses = [res[(local_loss, gather_with_grad)][0] for res in rank_results]
    if local_loss:
        torch.testing.assert_close(torch.stack(rank_losses).mean(), full_loss)
    else:
        for loss in rank_losses:
            torch.testing.assert_close(loss, full_loss)

    for r, res in enumerate(rank_results):
        _, gi, gt = res[(local_loss, gather_with_grad)]
        rows = slice(r * PER_RANK, (r + 1) * PER_RANK)
        if gather_with_grad:
            expected_i, expected_t = WORLD * full_gi[rows], WORLD * full_gt[rows]
        elif not local_loss:
            expected_i, expected_t = full_gi[rows], full_gt[rows]
        else:
            _, expected_i, expected_t = single_process(local_rows_only_for=r)
        torch.testing.assert_close(gi, expected_i)
        torch.testing.assert_close(gt, expected_t)
