"""Numerics and the non-finite loss policy.

- Under bf16/fp16 autocast, at the largest logit scale with near-identical captions and features, the
  loss is finite, within a measured tolerance of fp32 and of its analytic value (log n + w log(n - 1):
  near-uniform targets against near-uniform logits), and its gradients are finite and differ from
  fp32 only by rounding noise of a few units of the autocast dtype's roundoff.
- Its invariants hold for arbitrary batches (hypothesis), to within float64 rounding as measured.
- ``FiniteLossGuard``: without a GradScaler the first non-finite loss stops training, naming its step;
  with one (``--precision amp``) transient non-finite steps are logged and training goes on, and
  ``AMP_PATIENCE`` consecutive non-finite optimizer steps stop it, naming the first of them (with
  ``--accum-freq`` > 1 a step is non-finite when any of its micro-batches is); on one process and across
  ranks, before any checkpoint is written.
"""
import logging
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
from xsample_openclip.patches.finite import AMP_PATIENCE, FiniteLossGuard, NonFiniteLossError

# ---------------------------------------------------------------------------------------------------
# bf16 / fp16 autocast, logit scale 100, near-identical captions and features


def near_identical(n, d, eps, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, d, generator=g, dtype=dtype)
    return F.normalize(base + eps * torch.randn(n, d, generator=g, dtype=dtype), dim=-1)


UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
# Measured over tau_s in {0.01, 0.1} (the same to 3 digits), relative loss error vs fp32:
#   bf16: 3.0e-4 (image_weight 0), 3.3e-3 (image_weight 1: its image-image logits are a half-precision
#   matmul at scale 100); fp16: 3.6e-6, 5.7e-5. Tolerances: 3x those.
AMP_LOSS_TOLERANCE = {(torch.bfloat16, 0.0): 1e-3, (torch.bfloat16, 1.0): 1e-2,
                      (torch.float16, 0.0): 1.2e-5, (torch.float16, 1.0): 2e-4}
# Gradients: the fp32 ones are tiny here (norms 2e-4..5e-4: near-identical inputs, the signal is below
# bf16/fp16 resolution), so relative agreement is impossible by construction; what is bounded is the
# absolute rounding noise, in units u of the autocast dtype's roundoff. Measured (2-norm of the
# difference, worst parameter): 1.5-2.0 u (image_weight 0), 3.2-6.6 u (image_weight 1). Tolerance: 5 u
# and 15 u. An overflow, or rounding amplified by 1/tau_s or by the logit scale, is orders of magnitude more.
AMP_GRAD_TOLERANCE_U = {0.0: 5.0, 1.0: 15.0}


def near_identical_step(dtype, tau_s, image_weight):
    """One loss + backward through two linear towers; dtype None: fp32. Returns (losses, grads, captions)."""
    n, d = 16, 32
    torch.manual_seed(0)
    towers = torch.nn.ModuleDict({"img": torch.nn.Linear(d, d), "txt": torch.nn.Linear(d, d)})
    x_img, x_txt = near_identical(n, d, 1e-3, 1), near_identical(n, d, 1e-3, 2)
    captions = near_identical(n, 384, 1e-4, 3)  # cosine similarities all within ~1e-7 of 1
    scale = torch.tensor(math.log(100.0), requires_grad=True)  # OpenCLIP's clamp maximum
    loss_fn = XSampleLoss(tau_s=tau_s, clip_weight=0.1, image_weight=image_weight)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        img = F.normalize(towers["img"](x_img), dim=-1)
        txt = F.normalize(towers["txt"](x_txt), dim=-1)
        assert img.dtype == (dtype or torch.float32)  # the features really are half precision
        losses = loss_fn(img, txt, scale.exp(), caption_embeddings=captions, output_dict=True)
    sum(losses.values()).backward()
    return losses, [p.grad for p in towers.parameters()] + [scale.grad], captions


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tau_s", [0.01, 0.1])
@pytest.mark.parametrize("image_weight", [0.0, 1.0])
def test_autocast_large_scale_near_identical_captions(dtype, tau_s, image_weight):
    amp_losses, amp_grads, captions = near_identical_step(dtype, tau_s, image_weight)
    ref_losses, ref_grads, _ = near_identical_step(None, tau_s, image_weight)
    amp, ref = sum(amp_losses.values()), sum(ref_losses.values())
    assert amp.dtype == torch.float32 and torch.isfinite(amp)
    assert abs(amp.item() - ref.item()) <= AMP_LOSS_TOLERANCE[(dtype, image_weight)] * ref.item()
    # the reference itself against the analytic value: near-uniform targets against near-uniform logits
    # give CE = log n (and log(n - 1) for the image-image term); measured 1.04e-4 above it (the logits'
    # own spread at scale 100)
    n = len(captions)
    assert ref.item() == pytest.approx(math.log(n) + image_weight * math.log(n - 1), rel=0, abs=3e-4)
    for a, b in zip(amp_grads, ref_grads):
        assert a is not None and torch.isfinite(a).all()
        assert (a - b).norm().item() <= AMP_GRAD_TOLERANCE_U[image_weight] * UNIT_ROUNDOFF[dtype]
    target = soft_targets(captions, captions, tau_s, clip_weight=0.1)
    assert torch.isfinite(target).all()
    # rows sum to 1 up to float32 rounding: measured 1 ulp (1.2e-7); tolerance 2 ulps
    torch.testing.assert_close(target.sum(1), torch.ones(n), atol=2.5e-7, rtol=0)


def test_pure_half_features_and_exact_duplicates():
    """--precision fp16/bf16 hands the loss fp16 features; identical rows give equal logits."""
    for dtype in (torch.float16, torch.bfloat16):
        feats = F.normalize(torch.ones(8, 16), dim=-1).to(dtype).requires_grad_(True)
        cap = F.normalize(torch.ones(8, 4), dim=-1)
        loss = XSampleLoss(tau_s=0.01)(feats, feats, torch.tensor(100.0), caption_embeddings=cap)
        loss.backward()
        assert loss.dtype == torch.float32 and feats.grad.dtype == dtype
        # uniform targets, uniform logits (all exactly 100): CE = log 8, computed as logsumexp - 100 in
        # fp32, where one ulp at 102 is 7.6e-6. Measured 1.1e-5 (1.4 ulps); tolerance 3 ulps.
        assert loss.item() == pytest.approx(math.log(8), rel=0, abs=3 * 7.63e-6)
        # and the gradient vanishes (softmax = target in every row): measured 2.1e-5 from that same rounding;
        # a target or a direction that did not match would give O(scale / n) = O(10)
        assert torch.isfinite(feats.grad).all() and feats.grad.abs().max().item() <= 6e-5


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
        # float64 rounding: measured <= 6.7e-16 over 6000 hypothesis examples
        torch.testing.assert_close(p.sum(1), torch.ones(len(cap), dtype=p.dtype), atol=1e-14, rtol=0)
        if mask_self:
            assert (p.diagonal() == 0).all()


@settings(max_examples=60, deadline=None)
@given(batches())
def test_loss_is_at_least_the_entropy_of_its_targets(b):
    """CE(P, Q) = H(P) + KL(P || Q) >= H(P), in each direction and for the image-image term."""
    img, txt, cap, scale, tau, clip_weight, image_weight = b
    loss_fn = XSampleLoss(tau_s=tau, clip_weight=clip_weight, image_weight=image_weight)
    losses = loss_fn(img, txt, scale, caption_embeddings=cap, output_dict=True)
    # slack for float64 rounding when KL = 0: measured loss - bound >= -3.6e-15 (image term: >= -1.1e-16) over
    # 6000 hypothesis examples; the bound is O(1) (an entropy <= log 10), so 2e-14 is ~10 ulps of it
    bound = entropy(soft_targets(cap, cap, tau, clip_weight=clip_weight))
    assert float(losses["xsample_loss"]) >= float(bound) - 2e-14
    if "xsample_image_loss" in losses:
        image_bound = image_weight * entropy(soft_targets(cap, cap, tau, mask_self=True))
        assert float(losses["xsample_image_loss"]) >= float(image_bound) - 2e-14


@settings(max_examples=60, deadline=None)
@given(batches(), st.randoms(use_true_random=False))
def test_permuting_the_batch_leaves_the_loss_unchanged(b, rnd):
    img, txt, cap, scale, tau, clip_weight, image_weight = b
    perm = list(range(len(img)))
    rnd.shuffle(perm)
    loss_fn = XSampleLoss(tau_s=tau, clip_weight=clip_weight, image_weight=image_weight)
    before = loss_fn(img, txt, scale, caption_embeddings=cap)
    after = loss_fn(img[perm], txt[perm], scale, caption_embeddings=cap[perm])
    # only the summation order changes: measured <= 2.4e-14 relative (1.3e-12 absolute on a loss of ~60)
    # over 6000 hypothesis examples, and never more than 1e-13 relative
    torch.testing.assert_close(after, before, rtol=1e-13, atol=1e-14)


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


def guarded(values, epoch=0, batches=10, accum=1, log_every=3, grad_scaler=False, streak=None):
    guard = CountingGuard(Scripted(values), epoch, batches, accum, log_every, grad_scaler=grad_scaler, streak=streak)
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


# --- the fp16 / GradScaler policy (--precision amp) -------------------------------------------------

INF, NAN = float("inf"), float("nan")


def scripted_steps(steps, bad, accum=1, bad_micro=None):
    """Loss values call by call: optimizer steps in ``bad`` are non-finite in micro-batch ``bad_micro``
    (all of them when None), the rest finite."""
    values = []
    for step in range(steps):
        for micro in range(accum):
            hit = step in bad and (bad_micro is None or micro == bad_micro)
            values.append((NAN if step % 2 else INF) if hit else 1.0)  # odd steps NaN, even ones inf
    return values


def calls_until_stop(guard, calls):
    """Call the guard ``calls`` times; how many calls it had taken when it raised (None: it never did)."""
    for _ in range(calls):
        try:
            guard()
        except NonFiniteLossError:
            return guard._calls
    return None


def calls_until_stop_raising(guard, calls):
    for _ in range(calls):
        guard()


def warnings_logged(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_amp_transient_non_finite_steps_are_logged_and_training_goes_on(caplog):
    values = scripted_steps(40, bad={3, 4})
    guard = guarded(values, batches=40, log_every=10, grad_scaler=True)
    with caplog.at_level(logging.WARNING):
        assert calls_until_stop(guard, 40) is None
        guard.check()  # the end-of-epoch check passes too
    assert guard._checks == [1, 11, 21, 31, 40, 40]
    (warning,) = warnings_logged(caplog)  # once, at the first logging step after them (step 10)
    assert "2 optimizer step(s) up to epoch 0 had a non-finite loss" in warning
    assert "first at step 3" in warning and "Training goes on" in warning
    assert f"stops if {AMP_PATIENCE} consecutive steps are non-finite" in warning


def test_without_a_scaler_the_same_transient_stops_at_once():
    guard = guarded(scripted_steps(40, bad={3, 4}), batches=40, log_every=10)
    with pytest.raises(NonFiniteLossError, match=r"loss was nan at step 3 \(epoch 0, batch 4 of 40\)"):
        calls_until_stop_raising(guard, 40)
    assert guard._calls == 11  # at the first logging step after it (step 10)


def test_amp_patience_consecutive_non_finite_steps_stop_the_run():
    values = scripted_steps(40, bad=set(range(10, 40)))
    guard = guarded(values, batches=40, log_every=5, grad_scaler=True)
    with pytest.raises(NonFiniteLossError) as err:
        calls_until_stop_raising(guard, 40)
    # the 16th consecutive bad step is step 25, itself a logging step
    assert 10 + AMP_PATIENCE - 1 == 25 and guard._calls == 26
    message = str(err.value)
    assert (f"non-finite for {AMP_PATIENCE} consecutive steps from step 10 (epoch 0, batch 11 of 40; "
            "the first non-finite value, inf, at step 10)") in message
    assert "GradScaler skipped every one of them" in message and "--resume latest" in message


def test_amp_a_finite_step_restarts_the_count():
    short = set(range(2, 2 + AMP_PATIENCE - 1))          # 15 bad steps: 2..16
    fatal = set(range(18, 18 + AMP_PATIENCE))            # step 17 finite, then 16 bad: 18..33
    guard = guarded(scripted_steps(50, bad=short | fatal), batches=50, log_every=1, grad_scaler=True)
    with pytest.raises(NonFiniteLossError, match=r"consecutive steps from step 18 \(epoch 0, batch 19 of 50; "
                                                 r"the first non-finite value, inf, at step 2\)"):
        calls_until_stop_raising(guard, 50)
    assert guard._calls == 34  # checked at every step: stops at the 16th of the second run, step 33


def test_amp_fatal_streak_is_kept_until_the_end_of_epoch_check():
    """Finite steps after the streak do not erase it; with no logging step left, the epoch-end check stops."""
    guard = guarded(scripted_steps(20, bad=set(range(2, 2 + AMP_PATIENCE))), batches=20, log_every=100,
                    grad_scaler=True)
    assert calls_until_stop(guard, 19) is None  # steps 0..18: only step 0 is a logging step
    with pytest.raises(NonFiniteLossError, match=r"consecutive steps from step 2 \(epoch 0, batch 3 of 20"):
        guard()  # step 19, the last: a logging step


@pytest.mark.parametrize("bad_micro", [0, 2])
def test_amp_with_gradient_accumulation_counts_optimizer_steps(caplog, bad_micro):
    """accum_freq 3: a step is bad when any of its micro-batches is; steps are named globally (epoch 1)."""
    transient, persistent = {2}, set(range(8, 30))
    values = scripted_steps(30, bad=transient | persistent, accum=3, bad_micro=bad_micro)
    guard = guarded(values, epoch=1, batches=30, accum=3, log_every=4, grad_scaler=True)
    with caplog.at_level(logging.WARNING), pytest.raises(NonFiniteLossError) as err:
        calls_until_stop_raising(guard, len(values))
    # the 16th bad step is step 8 + 15 = 23; the next logging step is 24, whose last call is call 75
    assert guard._calls == 3 * 24 + 3
    assert (f"non-finite for {AMP_PATIENCE} consecutive steps from step 38 (epoch 1, batch 9 of 30; "
            "the first non-finite value, inf, at step 32)") in str(err.value)
    first, *_ = warnings_logged(caplog)  # at step 4: one bad optimizer step, not one per bad call
    assert "1 optimizer step(s) up to epoch 1 had a non-finite loss (fp16 overflow, first at step 32)" in first


def test_amp_each_warning_names_the_steps_it_counts(caplog):
    guard = guarded(scripted_steps(40, bad={3, 12}), batches=40, log_every=10, grad_scaler=True)
    with caplog.at_level(logging.WARNING):
        assert calls_until_stop(guard, 40) is None
    first, second = warnings_logged(caplog)  # at the checks of steps 10 and 20
    assert "1 optimizer step(s)" in first and "first at step 3" in first
    assert "1 optimizer step(s)" in second and "first at step 12" in second  # version 1 said step 3


def test_amp_streak_across_epochs_stops_the_run():
    """Epochs shorter than AMP_PATIENCE steps: the streak outlives each epoch's guard (version 1 restarted
    the count every epoch, so such a run never stopped)."""
    from xsample_openclip.patches.finite import Streak

    batches = 4  # optimizer steps per epoch, fewer than AMP_PATIENCE
    epochs = -(-AMP_PATIENCE // batches) + 1
    streak = Streak()  # what the patched train_one_epoch keeps on the run, epoch after epoch
    with pytest.raises(NonFiniteLossError, match=f"non-finite for {AMP_PATIENCE} consecutive steps from step 0"):
        for epoch in range(epochs):
            guard = guarded([INF] * batches, epoch=epoch, batches=batches, log_every=100, grad_scaler=True,
                            streak=streak)
            calls_until_stop_raising(guard, batches)
            guard.check()


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
