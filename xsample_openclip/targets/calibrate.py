"""Choosing tau_s from the data: the target's self-mass (or entropy) at the run's global batch size.

For a caption i in a batch of N, both X-Sample targets give the sample itself the share

    self-mass_i = 1 / (1 + sum_{j != i} exp((S_ij - S_ii) / tau_s))

of its row's target mass (the softmax target's diagonal; for the sigmoid loss's kernel target the
same ratio of t_ii = 1 to the row's total). How alike a data set's captions are decides which tau_s
gives which self-mass, so a fixed tau_s means different targets on different data and batch sizes;
a fixed self-mass does not. Self-mass is estimated for any batch size N from a sample of m captions:
the sum over a batch's N - 1 other captions is estimated by N - 1 times the mean of
exp((S_ij - S_ii) / tau_s) over the sample's other captions (exact in expectation for a batch drawn
from the data). Self-mass is a convex function of that sum, so the estimate is slightly low for
small batches (1.9 % at N = 64 in tests/test_calibrate.py) and exact as N grows and the sum
concentrates. It falls monotonically as tau_s grows, so tau_s for a target self-mass is found by
bracketed root finding in log tau_s.

Not every self-mass can be reached: identical captions share a row's mass at any tau_s (32 copies of a
class caption in a batch of 256 leave at most 1/32 on the sample itself), and a tiny batch keeps more than
a low self-mass on the sample even at the flattest tau_s. Then ``tau_for_self_mass`` raises
``UnreachableSelfMass`` (what was asked, what is reachable) instead of returning the bound of ``TAU_RANGE``,
whose targets would not be the ones asked for; the caller refuses with the flags that help.
"""
import math
from typing import Dict, Sequence

import torch

TAU_RANGE = (1e-4, 10.0)


class UnreachableSelfMass(ValueError):
    """No tau_s in ``TAU_RANGE`` gives the asked self-mass at this batch size.

    ``side``: "above" (the asked self-mass is above the most any tau_s reaches: duplicated captions) or
    "below" (it is below the least: a batch too small); ``reachable``: that bound, at ``tau_s``."""

    def __init__(self, asked: float, reachable: float, tau_s: float, batch_size: int, side: str):
        self.asked, self.reachable, self.tau_s, self.batch_size, self.side = asked, reachable, tau_s, batch_size, side
        bound = "at most" if side == "above" else "at least"
        super().__init__(f"self-mass {asked} cannot be reached at batch {batch_size}: every tau_s in "
                         f"[{TAU_RANGE[0]:g}, {TAU_RANGE[1]:g}] gives {bound} {reachable:.4g} (at tau_s {tau_s:g})")


def _weights(similarities: torch.Tensor, tau_s: float) -> torch.Tensor:
    """exp((S_ij - S_ii) / tau_s) for j != i (self-pairs zeroed), float64."""
    s = similarities.double()
    diag = s.diagonal().clone()
    w = torch.exp((s - diag[:, None]) / tau_s)
    w.fill_diagonal_(0.0)
    return w


def target_stats(similarities: torch.Tensor, tau_s: float, batch_size: int) -> Dict[str, float]:
    """Mean self-mass and mean row entropy (nats) of the targets at ``batch_size``, from a sample's
    caption similarities ``[m, m]`` (m >= 2); exact for ``batch_size == m``."""
    m = similarities.shape[0]
    if m < 2:
        raise ValueError("need at least 2 captions to estimate target statistics")
    w = _weights(similarities, tau_s)
    others = (batch_size - 1) / (m - 1)            # scales a sum over m - 1 to one over N - 1
    mass = w.sum(1) * others                       # sum over a batch's other captions, in expectation
    z = 1.0 + mass
    s = similarities.double()
    log_w = (s - s.diagonal()[:, None]) / tau_s
    # sum_j w_ij log w_ij (self term: 1 * log 1 = 0; a pair cut by top-k: w = 0, its term 0)
    weighted_log = torch.where(w > 0, w * log_w, torch.zeros_like(w)).sum(1) * others
    entropy = torch.log(z) - weighted_log / z
    return {"self_mass": float((1.0 / z).mean()), "entropy": float(entropy.mean()),
            "uniform_entropy": math.log(batch_size)}


def _self_mass_at(gaps: torch.Tensor, others: float):
    """self-mass as a function of log tau_s, from ``gaps`` = S_ij - S_ii (self-pairs -inf), float64."""
    def self_mass(log_tau: float) -> float:
        return float((1.0 / (1.0 + torch.exp(gaps / math.exp(log_tau)).sum(1) * others)).mean())
    return self_mass


def tau_for_self_mass(similarities: torch.Tensor, self_mass: float, batch_size: int, tol: float = 1e-12) -> float:
    """The tau_s whose targets put ``self_mass`` of each row on the sample itself (mean over rows).

    Self-mass falls monotonically in log tau_s; the root is bracketed in ``TAU_RANGE`` and found by
    regula falsi with the Illinois step (superlinear, about 10 evaluations instead of bisection's 60),
    to ``tol`` in self-mass or 1e-12 in log tau_s. Raises ``UnreachableSelfMass`` when no tau_s in the
    range gives ``self_mass``."""
    if not 0.0 < self_mass < 1.0:
        raise ValueError(f"self-mass must be in (0, 1), got {self_mass}")
    m = similarities.shape[0]
    if m < 2:
        raise ValueError("need at least 2 captions to estimate target statistics")
    s = similarities.double()
    gaps = s - s.diagonal()[:, None]
    gaps.fill_diagonal_(-math.inf)
    f = _self_mass_at(gaps, (batch_size - 1) / (m - 1))
    lo, hi = math.log(TAU_RANGE[0]), math.log(TAU_RANGE[1])
    f_lo, f_hi = f(lo) - self_mass, f(hi) - self_mass
    if f_hi > 0:               # even the flattest target keeps more on itself (tiny batch)
        raise UnreachableSelfMass(self_mass, f_hi + self_mass, TAU_RANGE[1], batch_size, "below")
    if f_lo < 0:               # duplicated captions cap the reachable self-mass
        raise UnreachableSelfMass(self_mass, f_lo + self_mass, TAU_RANGE[0], batch_size, "above")
    if f_lo == f_hi:           # both 0: every tau_s gives it (identical captions asked exactly 1 / N)
        return math.exp(hi)
    side = 0
    for _ in range(200):
        mid = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        f_mid = f(mid) - self_mass
        if abs(f_mid) <= tol or hi - lo <= 1e-12:
            return math.exp(mid)
        if f_mid > 0:          # still too sharp: the root is above mid
            lo, f_lo = mid, f_mid
            if side == 1:
                f_hi /= 2
            side = 1
        else:
            hi, f_hi = mid, f_mid
            if side == -1:
                f_lo /= 2
            side = -1
    return math.exp(mid)


def topk_similarities(similarities: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """The sample's similarities with the pairs a top-k graph (``--xsample-graph-topk``) would cut set to
    -inf, for ``target_stats`` / ``tau_for_self_mass`` at ``batch_size``. In a batch of N a row keeps
    itself and its K - 1 nearest of N - 1 others: the same share of the sample's m - 1 others, the
    k' = round((K - 1)(m - 1) / (N - 1)) nearest (at least 1; ties with the k'-th kept), is kept here,
    so the estimate's rescaling to N - 1 others (``target_stats``) holds. Exact when m = N."""
    from ..losses.graph import check_topk, topk_thresholds

    check_topk(k)
    m = similarities.shape[0]
    if k >= batch_size:
        return similarities
    kept = max(1, round((k - 1) * (m - 1) / (batch_size - 1)))
    s = similarities.double()
    ranked = s.clone()
    ranked.fill_diagonal_(math.inf)   # the row's own caption always counts as one of its K
    return s.masked_fill(ranked < topk_thresholds(ranked, kept + 1), -math.inf)


def similarities_of(embeddings: torch.Tensor) -> torch.Tensor:
    e = embeddings.double()
    return e @ e.T


def stats_table(similarities: torch.Tensor, batch_size: int, taus: Sequence[float]):
    """Rows (tau_s, self-mass, entropy, effective number of targets exp(entropy))."""
    rows = []
    for tau in taus:
        st = target_stats(similarities, tau, batch_size)
        rows.append((tau, st["self_mass"], st["entropy"], math.exp(st["entropy"])))
    return rows
