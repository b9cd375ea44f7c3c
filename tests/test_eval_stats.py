"""Scoring (RULER's string_match_all / part) and the paired permutation test."""

from __future__ import annotations

import numpy as np
import pytest

from delta_attn.eval import scoring, stats


def test_string_match_all_counts_the_fraction_found():
    refs = ["1234567", "7654321", "ABCDE", "fghij"]
    assert scoring.string_match_all("numbers: 1234567 and abcde.", refs) == 0.5
    assert scoring.string_match_all("1234567 7654321 abcde FGHIJ", refs) == 1.0
    assert scoring.string_match_all("nothing here", refs) == 0.0
    # case-insensitive, control characters do not join tokens
    assert scoring.string_match_all("The Value Is\x00Juniper Lighthouse", ["juniper lighthouse"]) == 1.0
    assert scoring.score(" 123456", ["1234567"], "all") == 0.0  # substring of the reference is not enough


def test_string_match_part_is_any_reference():
    assert scoring.string_match_part("It lies on the Oakflow.", ["Oakflow River", "Oakflow"]) == 1.0
    assert scoring.string_match_part("It lies on the Elm River.", ["Oakflow River", "Oakflow"]) == 0.0
    assert scoring.score("Ada Millward", ["ada millward"], "part") == 1.0
    with pytest.raises(ValueError):
        scoring.score("x", ["x"], "exact")
    with pytest.raises(ValueError):
        scoring.string_match_all("x", [])


def test_permutation_test_matches_exact_enumeration():
    rng = np.random.default_rng(3)
    for n in (6, 9, 12):
        a = rng.random(n) + 0.15
        b = rng.random(n)
        res = stats.paired_permutation_test(a, b, n_resamples=9999)
        assert res.exact  # 2**n <= 9999: scipy enumerates every sign pattern
        assert res.p_value == pytest.approx(stats.exact_sign_flip_p(a, b), abs=1e-12)
        assert res.diff == pytest.approx(float(np.mean(a - b)))


def test_permutation_test_known_answers():
    # every difference positive: only the identity pattern is as extreme, p = 1 / 2**n
    a, b = [1.0] * 8, [0.0] * 8
    assert stats.paired_permutation_test(a, b).p_value == pytest.approx(1 / 2**8)
    assert stats.paired_permutation_test(b, a).p_value == pytest.approx(1.0)  # one-sided: B > A is not evidence
    # all ties: p = 1
    assert stats.paired_permutation_test([0.5, 1, 0], [0.5, 1, 0]).p_value == 1.0
    # randomized regime (n = 60 > log2(9999)): a clear effect gives the smallest possible p
    rng = np.random.default_rng(0)
    x = (rng.random(60) < 0.9).astype(float)
    y = (rng.random(60) < 0.2).astype(float)
    r = stats.paired_permutation_test(x, y, n_resamples=9999)
    assert not r.exact and r.p_value == pytest.approx(1 / 10000)
    # and a null effect does not look significant, and the randomized p is close to the exact one
    z = rng.random(18)
    w = z + rng.normal(0, 0.1, 18)
    r = stats.paired_permutation_test(z, w, n_resamples=9999, seed=1)
    assert abs(r.p_value - stats.exact_sign_flip_p(z, w)) < 0.02


def test_permutation_test_rejects_unpaired():
    with pytest.raises(ValueError):
        stats.paired_permutation_test([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        stats.paired_permutation_test([], [])


def test_one_pair_is_enumerated():
    from delta_attn.eval.stats import paired_permutation_test

    r = paired_permutation_test([1.0], [0.0], n_resamples=99)
    assert (r.n, r.diff, r.p_value, r.exact) == (1, 1.0, 0.5, True)  # +d and −d: half the patterns reach d
    assert paired_permutation_test([0.0], [1.0], n_resamples=99).p_value == 1.0
    assert paired_permutation_test([0.0], [1.0], alternative="two-sided").p_value == 1.0
