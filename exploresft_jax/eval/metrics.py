"""Pass@k-style estimators over per-problem sample correctness (NumPy only; no JAX import).

- :func:`pass_at_k`: the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``, computed as a
  product of ratios so it is exact-to-rounding up to n = 1024 and beyond (no huge binomials).
- :func:`avg_at_n`: mean correctness over the n samples (Pass@1 from n samples, "avg@n").
- :func:`any_correct_at_n`: 1 if any of the n samples is correct (what the OXA release reports as Pass@k).
- :func:`maj_at_k`: majority-vote correctness, averaged over all k-subsets of the n samples (exact expectation
  for small n, Monte Carlo without replacement otherwise).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["pass_at_k", "pass_at_k_array", "mean_pass_at_k", "avg_at_n", "any_correct_at_n", "maj_at_k",
           "pass_at_k_curve", "default_ks"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased probability that at least one of k samples (drawn without replacement from n, c correct) is correct.

    Args:
      n: samples for the problem (n >= 1). c: correct ones (0 <= c <= n). k: 1 <= k <= n.
    Returns:
      a float in [0, 1]. ``pass_at_k(n, c, 1) == c / n``.
    Raises:
      ValueError on out-of-range arguments.
    """
    n, c, k = int(n), int(c), int(k)
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n, 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    if c == 0:
        return 0.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i): every factor is in (0, 1), so no overflow, and the
    # log-sum keeps the product accurate when it is tiny.
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    log_ratio = float(np.sum(np.log1p(-k / i)))
    return float(-math.expm1(log_ratio))


def pass_at_k_array(n, c, k: int) -> np.ndarray:
    """:func:`pass_at_k` per problem for arrays ``n``, ``c`` (same shape) and one ``k``."""
    n = np.asarray(n, dtype=np.int64)
    c = np.asarray(c, dtype=np.int64)
    return np.array([pass_at_k(int(a), int(b), k) for a, b in zip(n.ravel(), c.ravel())],
                    dtype=np.float64).reshape(n.shape)


def mean_pass_at_k(n, c, k: int) -> float:
    """Mean of :func:`pass_at_k` over problems (the benchmark's Pass@k)."""
    vals = pass_at_k_array(n, c, k)
    return float(vals.mean()) if vals.size else float("nan")


def avg_at_n(correct: Sequence[Sequence[bool]]) -> float:
    """Pass@1 estimated from all n samples: mean over problems of (correct samples / samples)."""
    per = [float(np.mean(np.asarray(row, dtype=bool))) for row in correct if len(row)]
    return float(np.mean(per)) if per else float("nan")


def any_correct_at_n(correct: Sequence[Sequence[bool]]) -> float:
    """Fraction of problems with at least one correct sample among all of theirs."""
    per = [float(np.any(np.asarray(row, dtype=bool))) for row in correct if len(row)]
    return float(np.mean(per)) if per else float("nan")


def default_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, plus n itself when n is not a power of two."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


def pass_at_k_curve(correct: Sequence[Sequence[bool]], ks: Sequence[int] | None = None) -> dict[int, float]:
    """Benchmark Pass@k for each k (default :func:`default_ks` of the smallest n), from per-sample correctness.

    Only k <= n of every problem is reported (a k above some problem's sample count is skipped).
    """
    rows = [np.asarray(r, dtype=bool) for r in correct if len(r)]
    if not rows:
        return {}
    n_min = min(len(r) for r in rows)
    ks = default_ks(n_min) if ks is None else [k for k in ks if 1 <= k <= n_min]
    ns = [len(r) for r in rows]
    cs = [int(r.sum()) for r in rows]
    return {int(k): mean_pass_at_k(ns, cs, int(k)) for k in ks}


def _majority_correct(answers: Sequence[Hashable | None], correct: Sequence[bool]) -> bool:
    """Correctness of the most frequent non-empty answer; ties go to the answer seen first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return False
    best = max(counts.values())
    for a, ok in zip(answers, correct):
        if a is not None and counts[a] == best:
            return bool(ok)
    return False


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int, *, max_subsets: int = 2000,
             seed: int = 0) -> float:
    """Majority-vote accuracy with k votes for one problem, averaged over k-subsets of its n samples.

    Args:
      answers: a canonical key per sample (e.g. the normalised extracted answer; None = no answer, never wins).
      correct: per-sample correctness. Samples with equal keys must have equal correctness.
      k: votes (1 <= k <= n). max_subsets: enumerate all subsets when there are at most this many, otherwise
        draw this many random subsets without replacement inside each subset.
    Returns: the expected majority-vote correctness in [0, 1].
    """
    n = len(answers)
    if len(correct) != n or not 1 <= k <= n:
        raise ValueError(f"maj_at_k needs len(answers) == len(correct) and 1 <= k <= n; got n={n}, k={k}")
    if k == n:
        return float(_majority_correct(answers, correct))
    if math.comb(n, k) <= max_subsets:
        import itertools

        subsets = itertools.combinations(range(n), k)
        vals = [_majority_correct([answers[i] for i in s], [correct[i] for i in s]) for s in subsets]
    else:
        rng = np.random.default_rng(seed)
        vals = []
        for _ in range(max_subsets):
            s = np.sort(rng.choice(n, size=k, replace=False))
            vals.append(_majority_correct([answers[i] for i in s], [correct[i] for i in s]))
    return float(np.mean(vals))
