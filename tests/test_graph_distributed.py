"""Top-k and centred graphs across gloo ranks (world size 2): rows are a rank's, columns the global batch,
so each rank's loss is the one-process loss (global mode) or its rows' share (--local-loss, sigmoid)."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from xsample_openclip.losses import XSampleSigLipLoss
from xsample_openclip.losses.softmax import XSampleLoss

WORLD, PER_RANK, K = 2, 4, 3
SETTINGS = dict(tau_s=0.2, clip_weight=0.2, image_weight=0.5, topk=K)


def full_batch():
    g = torch.Generator().manual_seed(3)
    n = WORLD * PER_RANK
    img = F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1)
    cap = F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1)
    cap[5] = cap[1]   # identical captions on two ranks: tied with the K-th value, both kept
    return img, txt, cap, torch.tensor(7.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)


def losses(rank, world):
    img, txt, cap, scale, bias = full_batch()
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK) if world > 1 else slice(None)
    out = {}
    for local in (False, True):
        fn = XSampleLoss(**SETTINGS, local_loss=local, rank=rank, world_size=world)
        out[("softmax", local)] = float(fn(img[rows], txt[rows], scale, caption_embeddings=cap[rows]))
    for target in ("kernel", "softmax"):
        for impl in ("bidir", "gather"):
            fn = XSampleSigLipLoss(tau_s=0.3, target=target, topk=K, rank=rank, world_size=world, dist_impl=impl)
            out[("sigmoid", target, impl)] = float(fn(img[rows], txt[rows], scale, bias, caption_embeddings=cap[rows]))
    return out


def _worker(rank, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/init", rank=rank, world_size=WORLD)
    torch.save(losses(rank, WORLD), f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo_graph")
    mp.start_processes(_worker, args=(str(tmp),), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def test_topk_losses_across_ranks_match_one_process(ranks):
    one = losses(0, 1)
    for rank in ranks:   # global mode: every rank computes the full-batch loss
        assert rank[("softmax", False)] == pytest.approx(one[("softmax", False)], rel=1e-12)
    assert sum(r[("softmax", True)] for r in ranks) / WORLD == pytest.approx(one[("softmax", False)], rel=1e-12)
    for key, value in one.items():
        if key[0] == "sigmoid":
            assert sum(r[key] for r in ranks) / WORLD == pytest.approx(value, rel=1e-12), key
    # top-k changed the loss (the cut is not a no-op at K = 3 of 8)
    img, txt, cap, scale, _ = full_batch()
    full = float(XSampleLoss(tau_s=0.2, clip_weight=0.2, image_weight=0.5)(img, txt, scale, caption_embeddings=cap))
    assert abs(full - one[("softmax", False)]) > 1e-3
