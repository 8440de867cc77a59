"""pass@k and friends against brute-force enumeration."""

import itertools
import math

import numpy as np
import pytest

from exploresft_jax.eval import (
    any_correct_at_n,
    avg_at_n,
    default_ks,
    maj_at_k,
    mean_pass_at_k,
    pass_at_k,
    pass_at_k_curve,
)


def brute_pass_at_k(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_matches_comb_up_to_64():
    for n in (16, 33, 64):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_reference_value_and_special_cases():
    assert pass_at_k(16, 4, 8) == pytest.approx(0.961538, abs=1e-6)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0
    for bad in [(0, 0, 1), (4, 5, 1), (4, 2, 5), (4, 2, 0), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_stable_at_n_1024():
    from fractions import Fraction

    n = 1024
    for c in (1, 2, 7, 100, 512, 1000):
        for k in (1, 2, 16, 256, 1000, 1024):
            exact = 1 if n - c < k else 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            got = pass_at_k(n, c, k)
            assert 0.0 <= got <= 1.0
            assert got == pytest.approx(float(exact), rel=1e-10, abs=1e-15)
    # monotone in k and in c
    vals = [pass_at_k(n, 3, k) for k in range(1, n + 1)]
    assert all(b >= a - 1e-15 for a, b in zip(vals, vals[1:]))


def test_avg_any_and_curve():
    correct = [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 1, 0, 1]]
    assert avg_at_n(correct) == pytest.approx((0.25 + 1 + 0 + 0.5) / 4)
    assert any_correct_at_n(correct) == pytest.approx(0.75)
    curve = pass_at_k_curve(correct)
    assert list(curve) == [1, 2, 4]
    assert curve[1] == pytest.approx(avg_at_n(correct))
    assert curve[4] == pytest.approx(any_correct_at_n(correct))
    assert mean_pass_at_k([4, 4], [1, 2], 2) == pytest.approx((0.5 + 5 / 6) / 2)
    assert default_ks(8) == [1, 2, 4, 8] and default_ks(6) == [1, 2, 4, 6] and default_ks(1) == [1]


def brute_maj(answers, correct, k):
    vals = []
    for s in itertools.combinations(range(len(answers)), k):
        counts = {}
        for i in s:
            if answers[i] is not None:
                counts[answers[i]] = counts.get(answers[i], 0) + 1
        if not counts:
            vals.append(0)
            continue
        best = max(counts.values())
        winner = next(answers[i] for i in s if answers[i] is not None and counts[answers[i]] == best)
        vals.append(int(correct[answers.index(winner)]))
    return float(np.mean(vals))


def test_maj_at_k():
    answers = ["5", "5", "7", "7", "7", None, "5"]
    correct = [a == "5" for a in answers]
    for k in range(1, len(answers) + 1):
        assert maj_at_k(answers, correct, k) == pytest.approx(brute_maj(answers, correct, k))
    assert maj_at_k(answers, correct, 7) == 1.0          # tie 3-3: the answer seen first wins
    assert maj_at_k([None, None], [False, False], 1) == 0.0
    # sampled estimate is close to the exact expectation
    answers = ["a"] * 10 + ["b"] * 14
    correct = [a == "a" for a in answers]
    exact = brute_maj(answers[:12], correct[:12], 5)
    approx = maj_at_k(answers[:12], correct[:12], 5, max_subsets=100, seed=1)
    assert abs(approx - exact) < 0.2
