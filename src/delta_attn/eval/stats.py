"""Paired permutation tests, as in the paper's rebuttal (one-sided, 9999 resamples).

For paired scores ``a_i`` (method A on sample i) and ``b_i`` (method B on the same sample), the test
statistic is the mean difference ``mean(a - b)``; under the null hypothesis the labels A/B of each pair
are exchangeable, so the null distribution comes from flipping the sign of each difference at random
(``scipy.stats.permutation_test`` with ``permutation_type="samples"``). One-sided: H1 is "A > B".
Tied pairs (difference 0) stay in: they add 0 to every resample. When the 2**n sign patterns number
at most ``n_resamples``, scipy enumerates them (exact p); otherwise the p-value is the randomised
``(k + 1) / (n_resamples + 1)``, so the smallest reportable p is 1e-4 with 9999 resamples.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 9999


@dataclass(frozen=True)
class PermutationResult:
    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean(a - b)
    p_value: float
    exact: bool


def paired_permutation_test(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    alternative: str = "greater",
    seed: int = 0,
) -> PermutationResult:
    """One-sided (default "A > B") paired permutation test of the mean difference."""
    from scipy import stats

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be 1-D and paired (same length), got {x.shape} and {y.shape}")
    n = int(x.size)
    if n == 0:
        raise ValueError("no pairs")
    d = x - y
    if not np.any(d):
        # every pair tied: the null distribution is a point mass at 0 and p = 1
        return PermutationResult(n, float(x.mean()), float(y.mean()), 0.0, 1.0, True)

    if n == 1:  # scipy needs two pairs; one pair has two sign patterns: enumerate them
        p = exact_sign_flip_p(x, y, alternative)
        return PermutationResult(n, float(x.mean()), float(y.mean()), float(d.mean()), p, True)

    def statistic(u, v, axis=-1):
        return np.mean(u - v, axis=axis)

    res = stats.permutation_test(
        (x, y),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative=alternative,
        random_state=seed,
    )
    exact = 2**n <= n_resamples
    return PermutationResult(n, float(x.mean()), float(y.mean()), float(d.mean()), float(res.pvalue), exact)


def exact_sign_flip_p(a: Sequence[float], b: Sequence[float], alternative: str = "greater") -> float:
    """The exact one-sided p-value by enumerating all 2**n sign flips (for checking; n <= 20)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size > 20:
        raise ValueError("exact enumeration is for n <= 20")
    obs = d.mean()
    flips = np.array(list(itertools.product([1.0, -1.0], repeat=d.size)))
    null = (flips * d).mean(axis=1)
    eps = 1e-12 * max(1.0, abs(obs))
    if alternative == "greater":
        return float(np.mean(null >= obs - eps))
    if alternative == "less":
        return float(np.mean(null <= obs + eps))
    return float(np.mean(np.abs(null) >= abs(obs) - eps))
