"""Statistics over seeds: mean and sample standard deviation, and the 95 % confidence interval of a
mean paired difference (Student's t with n - 1 degrees of freedom, the interval a reader can recompute
from the per-seed differences alone).

The t quantile comes from the exact closed form of Student's t distribution for integer degrees of
freedom (Abramowitz & Stegun 26.7.3-4), inverted by bisection: no SciPy needed.
"""
from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence, Tuple


def mean_std(values: Sequence[float]):
    """(mean, sample standard deviation; 0 for one value), or (None, None) for none."""
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with ``df`` (a positive integer) degrees of freedom."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), (df - 1) / 2 terms
        term, total = 1.0, 0.0
        for k in range((df - 1) // 2):
            total += term
            term *= c2 * (2 * k + 2) / (2 * k + 3)
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 0.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df / 2 terms
    for k in range(df // 2):
        total += term
        term *= c2 * (2 * k + 1) / (2 * k + 2)
    return math.sin(theta) * total


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom."""
    if not (0.5 < p < 1 and int(df) == df and df >= 1):
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and a positive integer df, got p={p}, df={df}")
    low, high = 0.0, 1.0
    while t_central_mass(high, df) < 2 * p - 1:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_central_mass(mid, df) < 2 * p - 1 else (low, mid)
    return (low + high) / 2


def mean_ci(values: Sequence[float], level: float = 0.95) -> Optional[Tuple[float, float]]:
    """The ``level`` confidence interval of the mean of ``values`` (t, n - 1 df); None below two values."""
    n = len(values)
    if n < 2:
        return None
    mean, std = mean_std(values)
    half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half
