"""Math answer verification: the RL reward and the judge of every evaluation.

Quick use::

    from exploresft_jax.rewards import verify, math_reward, check, check_batch
    verify("\\\\frac{1}{2}", "... so the answer is \\\\boxed{0.5}.")        # True
    math_reward("3", "<think>...</think> \\\\boxed{4}")                    # 0.0
    check("3", "no idea")                                              # Verdict(status='no_answer', ...)
    check_batch(golds, responses)                                      # list[Verdict], same order

Every call runs under a hard per-item timeout in worker processes (see ``pool.py``), never hangs, and never
raises on any input string. Options (keyword arguments of every function, see :class:`VerifierConfig`):
``timeout``, ``require_think_close``, ``last_number_fallback``, ``take_whole``, ``float_rel_tol``,
``string_match``, ``max_answer_chars``, ``extraction`` (``permissive`` by default, for evaluation;
``boxed_only`` for RL rewards where answering in a box is part of the task; ``standard``).
"""

from __future__ import annotations

import multiprocessing as mp
import threading

from .equivalence import compare_answers, gold_answer, judge, normalize_answer
from .extract import EXTRACTION_MODES, all_boxed, extract_answer, is_single_expression, last_boxed, strip_think
from .pool import VerifierPool, check_inline
from .verdict import CORRECT, NO_ANSWER, PARSE_ERROR, STATUSES, TIMEOUT, WRONG, Verdict, VerifierConfig

__all__ = [
    "verify", "math_reward", "check", "check_batch", "math_rewards", "default_pool",
    "Verdict", "VerifierConfig", "VerifierPool", "STATUSES", "CORRECT", "WRONG", "NO_ANSWER", "TIMEOUT",
    "PARSE_ERROR", "extract_answer", "last_boxed", "strip_think", "is_single_expression", "judge",
    "check_inline", "compare_answers", "normalize_answer", "gold_answer", "all_boxed", "EXTRACTION_MODES",
]

_pool_lock = threading.Lock()
_pool: VerifierPool | None = None


def default_pool() -> VerifierPool:
    """The process-wide pool used by the module-level functions (one worker per CPU, started lazily)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = VerifierPool()
        return _pool


def _config(config: VerifierConfig | None, overrides: dict) -> VerifierConfig:
    cfg = config or VerifierConfig()
    return cfg.replace(**overrides) if overrides else cfg


def _can_fork_children() -> bool:
    # Daemonic processes (workers of another multiprocessing pool) may not start children.
    return not mp.current_process().daemon


def check(gold, prediction, *, config: VerifierConfig | None = None, **overrides) -> Verdict:
    """Verdict (status and reason) for one prediction against one gold answer.

    Args:
      gold: the reference answer: a bare answer (``\\frac{1}{2}``, ``$x=3$``), a number, a list of answers, or
        a solution containing ``\\boxed{}``.
      prediction: a whole response (the answer is extracted) or a bare answer (taken whole when it is one
        math expression).
      config / overrides: :class:`VerifierConfig` or its fields as keywords.
    """
    cfg = _config(config, overrides)
    if not _can_fork_children():
        return check_inline(gold, prediction, cfg)
    return default_pool().check(gold, prediction, cfg)


def verify(gold, prediction, *, config: VerifierConfig | None = None, **overrides) -> bool:
    """True iff ``prediction`` (a response or a bare answer) is equivalent to ``gold``. See :func:`check`."""
    return check(gold, prediction, config=config, **overrides).correct


def math_reward(gold, response, *, config: VerifierConfig | None = None, **overrides) -> float:
    """1.0 for a correct response, 0.0 otherwise (wrong, no answer, timeout, parse error)."""
    return check(gold, response, config=config, **overrides).reward


def check_batch(golds, predictions, *, config: VerifierConfig | None = None, pool: VerifierPool | None = None,
                progress: bool = False, **overrides) -> list[Verdict]:
    """Verdicts for ``zip(golds, predictions)`` in order, over a process pool (default: :func:`default_pool`).

    ``golds`` may be a single answer shared by all predictions (e.g. G completions of one prompt).
    """
    cfg = _config(config, overrides)
    if pool is None and not _can_fork_children():
        predictions = list(predictions)
        golds = [golds] * len(predictions) if isinstance(golds, (str, int, float)) else list(golds)
        return [check_inline(g, p, cfg) for g, p in zip(golds, predictions, strict=True)]
    return (pool or default_pool()).check_batch(golds, predictions, config=cfg, progress=progress)


def math_rewards(golds, responses, **kwargs) -> list[float]:
    """Rewards (1.0 / 0.0) for a batch, in order; keywords as for :func:`check_batch`."""
    return [v.reward for v in check_batch(golds, responses, **kwargs)]


