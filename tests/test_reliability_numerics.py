"""Numerics: the loss stays finite under bf16/fp16 autocast at the largest logit scale with near-identical
captions; its invariants hold for arbitrary batches (hypothesis); a non-finite loss stops training naming
the step, before any checkpoint is written, on one process and across ranks."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fault_runner import csv_args, run_main, train_argv
from xsample_openclip.losses.graph import softmax_targets as soft_targets
from xsample_openclip.losses.softmax import XSampleLoss
from xsample_openclip.patches.finite import FiniteLossGuard, NonFiniteLossError

# ---------------------------------------------------------------------------------------------------
# bf16 / fp16 autocast, logit scale 100, near-identical captions and features


def near_identical(n, d, eps, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, d, generator=g, dtype=dtype)
    return F.normalize(base + eps * torch.randn(n, d, generator=g, dtype=dtype), dim=-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tau_s", [0.01, 0.1])
@pytest.mark.parametrize("image_weight", [0.0, 1.0])
def test_autocast_large_scale_near_identical_captions_finite_loss_and_grads(dtype, tau_s, image_weight):
    n, d = 16, 32
    torch.manual_seed(0)
    towers = torch.nn.ModuleDict({"img": torch.nn.Linear(d, d), "txt": torch.nn.Linear(d, d)})
    x_img, x_txt = near_identical(n, d, 1e-3, 1), near_identical(n, d, 1e-3, 2)
    captions = near_identical(n, 384, 1e-4, 3)  # cosine similarities all within ~1e-7 of 1
    scale = torch.tensor(math.log(100.0), requires_grad=True)  # OpenCLIP's clamp maximum
    loss_fn = XSampleLoss(tau_s=tau_s, clip_weight=0.1, image_weight=image_weight)
    with torch.autocast("cpu", dtype=dtype):
        img = F.normalize(towers["img"](x_img), dim=-1)
        txt = F.normalize(towers["txt"](x_txt), dim=-1)
        assert img.dtype == dtype  # the features really are half precision
        losses = loss_fn(img, txt, scale.exp(), caption_embeddings=captions, output_dict=True)
        total = sum(losses.values())
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in towers.parameters()] + [scale.grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    target = soft_targets(captions, captions, tau_s, clip_weight=0.1)
    assert torch.isfinite(target).all()
    torch.testing.assert_close(target.sum(1), torch.ones(n), atol=1e-6, rtol=0)


def test_pure_half_features_and_exact_duplicates():
    """--precision fp16/bf16 hands the loss fp16 features; identical rows give equal logits."""
    for dtype in (torch.float16, torch.bfloat16):
        feats = F.normalize(torch.ones(8, 16), dim=-1).to(dtype).requires_grad_(True)
        cap = F.normalize(torch.ones(8, 4), dim=-1)
        loss = XSampleLoss(tau_s=0.01)(feats, feats, torch.tensor(100.0), caption_embeddings=cap)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()
        assert loss.item() == pytest.approx(math.log(8), rel=1e-3)  # uniform targets, uniform logits


# ---------------------------------------------------------------------------------------------------
# Property-based invariants


@st.composite
def batches(draw):
    n = draw(st.integers(1, 10))
    d = draw(st.integers(1, 6))
    e = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    g = torch.Generator().manual_seed(seed)
    pool = F.normalize(torch.randn(draw(st.integers(1, n)), e, generator=g, dtype=torch.float64), dim=-1)
    cap = pool[torch.randint(len(pool), (n,), generator=g)]  # duplicates on purpose
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(draw(st.floats(0.0, 100.0)), dtype=torch.float64)
    tau = draw(st.floats(1e-3, 10.0))
    clip_weight = draw(st.floats(0.0, 1.0))
    image_weight = draw(st.sampled_from([0.0, 0.5]))
    return img, txt, cap, scale, tau, clip_weight, image_weight


def entropy(p):
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1).mean()


@settings(max_examples=60, deadline=None)
@given(batches())
def test_targets_are_distributions(b):
    img, txt, cap, scale, tau, clip_weight, _ = b
    for mask_self in ((False, True) if len(cap) > 1 else (False,)):
        p = soft_targets(cap, cap, tau, clip_weight=0.0 if mask_self else clip_weight, mask_self=mask_self)
        assert torch.isfinite(p).all() and (p >= 0).all()
        torch.testing.assert_close(p.sum(1), torch.ones(len(cap), dtype=p.dtype), atol=1e-9, rtol=0)
        if mask_self:
            assert (p.diagonal() == 0).all()


@settings(max_examples=60, deadline=None)
@given(batches())
def test_loss_is_at_least_the_entropy_of_its_targets(b):
    """CE(P, Q) = H(P) + KL(P || Q) >= H(P), in each direction and for the image-image term."""
    img, txt, cap, scale, tau, clip_weight, image_weight = b
    loss_fn = XSampleLoss(tau_s=tau, clip_weight=clip_weight, image_weight=image_weight)
    losses = loss_fn(img, txt, scale, caption_embeddings=cap, output_dict=True)
    bound = entropy(soft_targets(cap, cap, tau, clip_weight=clip_weight))
    assert float(losses["xsample_loss"]) >= float(bound) - 1e-9
    if "xsample_image_loss" in losses:
        image_bound = image_weight * entropy(soft_targets(cap, cap, tau, mask_self=True))
        assert float(losses["xsample_image_loss"]) >= float(image_bound) - 1e-9


@settings(max_examples=60, deadline=None)
@given(batches(), st.randoms(use_true_random=False))
def test_permuting_the_batch_leaves_the_loss_unchanged(b, rnd):
    img, txt, cap, scale, tau, clip_weight, image_weight = b
    perm = list(range(len(img)))
    rnd.shuffle(perm)
    loss_fn = XSampleLoss(tau_s=tau, clip_weight=clip_weight, image_weight=image_weight)
    before = loss_fn(img, txt, scale, caption_embeddings=cap)
    after = loss_fn(img[perm], txt[perm], scale, caption_embeddings=cap[perm])
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------
# Non-finite loss guard


class Scripted:
    """A stand-in loss returning the scripted values, call by call."""

    needs_tokens = True

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, **_):
        return {"xsample_loss": torch.tensor(self.values.pop(0))}


class CountingGuard(FiniteLossGuard):
    def check(self):
        self._checks.append(self._calls)
        return super().check()


def guarded(values, epoch=0, batches=10, accum=1, log_every=3):
    guard = CountingGuard(Scripted(values), epoch, batches, accum, log_every)
    guard._checks = []
    return guard


def test_guard_syncs_only_where_open_clip_logs():
    guard = guarded([1.0] * 10)
    for _ in range(10):
        guard()
    assert guard._checks == [1, 4, 7, 10]  # after the calls of batches 0, 3, 6 and the last (9)
    assert guard.needs_tokens  # attributes reach the wrapped loss


def test_guard_names_the_first_non_finite_step_at_the_next_check():
    guard = guarded([1.0, 2.0, 3.0, 4.0, float("nan"), float("inf"), 5.0], epoch=2)
    for _ in range(4):
        guard()  # batches 0..3: checks at 0 and 3 pass
    guard()      # batch 4: NaN, recorded without a check
    guard()      # batch 5: inf, not the first
    with pytest.raises(NonFiniteLossError, match=r"loss was nan at step 24 \(epoch 2, batch 5 of 10\)"):
        guard()  # batch 6: a logging step
    assert guard._checks[-1] == 7


def test_guard_with_gradient_accumulation_counts_optimizer_steps():
    guard = guarded([1.0] * 7 + [float("nan")] + [1.0] * 4, batches=6, accum=2, log_every=2)
    for _ in range(7):
        guard()
    with pytest.raises(NonFiniteLossError, match=r"at step 3 \(epoch 0, batch 4 of 6\)"):
        for _ in range(5):
            guard()  # call 7 is batch 3 (NaN); the next check is at the end of batch 4
    assert guard._checks == [2, 6, 10]


def test_guard_end_of_epoch_check_and_fix_hints():
    guard = guarded([1.0, float("-inf")], batches=10, log_every=100)
    guard()
    guard()  # no logging step after it in this (short) epoch
    with pytest.raises(NonFiniteLossError) as err:
        guard.check()  # what the patched train_one_epoch does before returning to main
    for fix in ("--lr", "--precision amp_bf16", "--grad-clip-norm", "--xsample-tau-s", "--resume latest"):
        assert fix in str(err.value)


def test_nan_in_training_stops_the_run_before_a_checkpoint(tmp_path, csv_data):
    logs = tmp_path / "logs"
    argv = train_argv(logs, "nan", csv_args(csv_data), "--save-most-recent", "--log-every-n-steps", "3",
                      epochs=3)
    with pytest.raises(NonFiniteLossError, match=r"at step 5 \(epoch 1, batch 2 of 4\)") as err:
        run_main(argv, {"nan_at": [1, 1]})  # NaN at a step that is not a logging step
    assert str(logs / "nan" / "checkpoints") in str(err.value)
    ckpts = logs / "nan" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_1.pt", "epoch_latest.pt"]
    latest = torch.load(ckpts / "epoch_latest.pt", weights_only=True)
    assert latest["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in latest["state_dict"].values())
    log = (logs / "nan" / "out.log").read_text()
    assert "ERROR | training loss was nan at step 5" in log and "Start epoch 2" not in log


WORLD = 2


def _guard_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    values = [1.0] * 6
    if rank == 1:
        values[2] = float("nan")  # only rank 1 sees it (e.g. --local-loss)
    guard = FiniteLossGuard(Scripted(values), 0, 6, 1, 4, distributed=True)
    outcome = "finished"
    try:
        for _ in range(6):
            guard()
    except NonFiniteLossError as err:
        outcome = f"{guard._calls}: {err}"
    with open(f"{out_dir}/rank{rank}.txt", "w") as f:
        f.write(outcome)
    dist.destroy_process_group()


def test_every_rank_stops_together(tmp_path):
    mp.start_processes(_guard_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="spawn")
    for rank in range(WORLD):
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert outcome.startswith("5: ") and "at step 2 (epoch 0, batch 3 of 6)" in outcome, outcome
    assert "loss was nan" in (tmp_path / "rank1.txt").read_text()
