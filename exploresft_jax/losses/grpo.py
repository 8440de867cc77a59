"""GRPO: group-relative advantages and the clipped policy-gradient loss with exact aggregation.

Aggregation modes (``l`` = per-token loss, ``m`` = mask, ``|o_i|`` = tokens of sequence ``i``):

=============================  ============================================================
``token-mean``                 ``sum_{i,t} m l / N_tokens``
``seq-mean-token-mean``        ``(1 / N_seqs) sum_i (sum_t m l / |o_i|)``
``seq-mean-token-sum``         ``(1 / N_seqs) sum_i sum_t m l``
``seq-mean-token-sum-norm``    ``(1 / (N_seqs * max_len)) sum_{i,t} m l``  (Dr. GRPO, constant ``max_len``)
=============================  ============================================================

``N_tokens`` / ``N_seqs`` default to the counts of this batch; pass ``num_tokens`` / ``num_seqs`` of the
global batch and sum the micro-batch losses to get the global-batch loss exactly, whatever the micro-batching.
``seq-mean-token-sum-norm`` divides by the number of sequences as Dr. GRPO's reference and TRL's ``dr_grpo``
do (verl's mode of the same name does not).

Policy-gradient terms (:func:`grpo_loss`, ``policy_loss``): ``ppo_clip`` (PPO / GRPO / DAPO clip-higher, optional
dual clip), ``gspo`` (GSPO, Zheng et al. 2025, sequence-level ratio in its GSPO-token form) and ``cispo``
(CISPO, MiniMax-M1 2025, clipped and detached IS weight on ``log pi``).  Extra per-token weights on the
policy-gradient term (``pg_weight``) carry the sampler/trainer mismatch correction
(:func:`rollout_correction_weights`, truncated / masked importance sampling as TRL and verl) and the
high-entropy-token selection (Wang et al. 2025, "Beyond the 80/20 Rule").  Rollout-level helpers for the loop:
:func:`passk_advantages` (Chen et al. 2025, Pass@k Training) and :func:`overlong_penalty` (DAPO's soft overlong
punishment).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from exploresft_jax.losses.reduce import safe_divide

_F32 = jnp.float32
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
GSPO_LOG_RATIO_MAX = 10.0  # verl clamps the log of GSPO's token ratio at 10 (overflow guard)


# --- registries: a policy loss, an advantage estimator or a rollout correction is one entry + its function ----------

class PolicyTerm(NamedTuple):
    """What a policy loss gives per token ([B, T]): `pg` the policy-gradient loss (before weights, KL and
    aggregation), `ratio` the detached importance ratio it reports, `low` / `high` where its clip is active, and
    `dual` where the dual clip caps the loss."""

    pg: jax.Array
    ratio: jax.Array
    low: jax.Array
    high: jax.Array
    dual: jax.Array


@dataclasses.dataclass(frozen=True)
class PolicyLoss:
    """A registered policy loss: `fn(logp, old, adv, mask, *, clip_low, clip_high, dual_clip, log_ratio_clamp) ->
    PolicyTerm` (all [B, T] float32, `old` / `adv` detached) and the names of the config fields (of the `grpo`
    section) that hold its (clip_low, clip_high)."""

    name: str
    fn: Callable[..., PolicyTerm]
    clip_fields: tuple[str, str]


@dataclasses.dataclass(frozen=True)
class AdvantageEstimator:
    """A registered advantage estimator: `fn(rewards [N], group_size, *, scale, k) -> (advantages [N], info)` with
    `info["zero_variance"]` ([N] bool); `uses_k`: whether it reads the `k` (grpo.passk_k) argument."""

    name: str
    fn: Callable
    uses_k: bool = False


@dataclasses.dataclass(frozen=True)
class RolloutCorrection:
    """A registered sampler / trainer mismatch correction: `fn(rho, log_rho, mask, threshold, log_ratio_clamp) ->
    (weights, capped, ratio, valid)`, all [B, T] except `ratio` / `valid`, which are per token or per row (the
    values whose extremes are reported)."""

    name: str
    fn: Callable


POLICY_LOSSES: dict[str, PolicyLoss] = {}
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}
ROLLOUT_CORRECTIONS: dict[str, RolloutCorrection] = {}


def register_policy_loss(name: str, *, clip_fields: tuple[str, str]):
    """Decorator: adds a policy loss under `name` (selectable as `grpo.policy_loss`)."""

    def wrap(fn):
        POLICY_LOSSES[name] = PolicyLoss(name, fn, clip_fields)
        return fn

    return wrap


def register_advantage_estimator(name: str, *, uses_k: bool = False):
    """Decorator: adds an advantage estimator under `name` (selectable as `grpo.advantage_estimator`)."""

    def wrap(fn):
        ADVANTAGE_ESTIMATORS[name] = AdvantageEstimator(name, fn, uses_k)
        return fn

    return wrap


def register_rollout_correction(name: str):
    """Decorator: adds a rollout correction under `name` (selectable as `grpo.rollout_correction`)."""

    def wrap(fn):
        ROLLOUT_CORRECTIONS[name] = RolloutCorrection(name, fn)
        return fn

    return wrap


def _lookup(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"{kind} must be one of {tuple(registry)}, got {name!r}")
    return registry[name]


def grpo_advantages(rewards: jax.Array, group_size: int, *, scale: str = "group", eps: float = 1e-6,
                    return_info: bool = False):
    """Outcome advantages, one per response, from scalar rewards of groups of ``group_size`` responses.

    ``A_i = (R_i - mean_g R) / (std + eps)`` where ``std`` is the group's Bessel-corrected (ddof=1) standard
    deviation (``scale="group"``, GRPO), the whole batch's Bessel std (``scale="batch"``), or no division at
    all (``scale="none"``, Dr. GRPO: ``A_i = R_i - mean_g R``).  A group of one has mean 0 and std 1, so
    ``A = R`` (verl's convention).  Groups whose rewards are all equal get ``A = 0`` exactly.

    Args:
      rewards: ``[N]`` rewards, ``N = num_groups * group_size``, each group contiguous.
      group_size: ``G`` (static int).
      scale: ``"group" | "batch" | "none"``.
      eps: added to the std.
      return_info: also return a dict with ``"zero_variance"`` (``[N]`` bool, True for members of groups with
        identical rewards) and ``"frac_zero_variance"`` (fraction of such groups).

    Returns:
      ``[N]`` float32 advantages (no gradient), or ``(advantages, info)`` with ``return_info=True``.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be group | batch | none, got {scale!r}")
    r = lax.stop_gradient(rewards).astype(_F32)
    if r.ndim != 1 or r.shape[0] % group_size:
        raise ValueError(f"rewards must be [N] with N a multiple of group_size={group_size}, got {r.shape}")
    g = r.reshape(-1, group_size)
    if group_size == 1:
        mean, std = jnp.zeros_like(g), jnp.ones_like(g)
    else:
        mean = jnp.mean(g, axis=1, keepdims=True)
        std = jnp.std(g, axis=1, ddof=1, keepdims=True)
    centred = g - mean
    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        adv = centred / ((jnp.std(r, ddof=1) if r.shape[0] > 1 else 1.0) + eps)
    else:
        adv = centred
    zero_var = jnp.all(g == g[:, :1], axis=1) & (group_size > 1)
    adv = jnp.where(zero_var[:, None], 0.0, adv).reshape(-1)
    if not return_info:
        return adv
    info = {"zero_variance": jnp.repeat(zero_var, group_size), "frac_zero_variance": jnp.mean(zero_var.astype(_F32))}
    return adv, info


def _passk_tables(n: int, k: int) -> tuple[list[float], list[float], list[float]]:
    """(pass@k group reward, advantage of a correct member, advantage of an incorrect member) for c = 0..n correct
    members of a group of n, in float64 from exact binomials (see :func:`passk_advantages`)."""
    r_bar, pos, neg = [], [], []
    for c in range(n + 1):
        n_neg = n - c
        r = 1.0 - math.comb(n_neg, k) / math.comb(n, k)
        sigma = math.sqrt(max(r * (1.0 - r), 0.0))
        r_bar.append(r)
        if c == 0 or n_neg < k:  # every k-subset fails / passes: zero variance, no signal
            pos.append(0.0)
            neg.append(0.0)
            continue
        pos.append((1.0 - r) / sigma)
        neg.append((1.0 - r - math.comb(n_neg - 1, k - 1) / math.comb(n - 1, k - 1)) / sigma)
    return r_bar, pos, neg


def passk_advantages(rewards: jax.Array, group_size: int, k: int, *, threshold: float = 0.5,
                     return_info: bool = False):
    """Pass@k advantages, the analytic form of Chen et al. 2025, "Pass@k Training for Adaptively Balancing
    Exploration and Exploitation of Large Reasoning Models" (arXiv 2508.10751).

    Outcomes are binary: a response is correct when its reward is ``>= threshold`` (0.5 reads both 0/1 and -1/+1
    rewards).  In a group of ``n = group_size`` responses with ``c`` correct and ``n_neg = n - c`` incorrect, every
    ``k``-subset of the group is a "pass@k group" whose reward is 1 when it holds a correct response.  Over the
    ``C(n, k)`` subsets:

        mean   R     = 1 - C(n_neg, k) / C(n, k)        (the unbiased pass@k estimate of the group, Chen et al. 2021)
        std    sigma = sqrt(R (1 - R))                  (binary subset rewards: population std over the subsets)

    A response's advantage is the mean of ``(R_g - R) / sigma`` over the ``C(n - 1, k - 1)`` subsets ``g`` that
    contain it:

        correct     (1 - R) / sigma                                      (every subset holding it passes)
        incorrect   (1 - R - C(n_neg - 1, k - 1) / C(n - 1, k - 1)) / sigma

    (of the subsets holding an incorrect response, the fraction ``C(n_neg - 1, k - 1) / C(n - 1, k - 1)`` holds only
    incorrect ones and scores 0; the others score 1).  These are the paper's ``A_pos`` / ``A_neg``.  Since each
    subset is counted ``k`` times over its members and the subset advantages are centred, a group's advantages sum
    to 0.  ``k = 1`` gives GRPO's ``(R_i - p) / std`` with ``p = c / n`` and the population std.  Groups with
    ``sigma = 0`` (``c = 0``, or ``n_neg < k``: every subset passes) get 0.  The binomials are exact (Python
    integers, tabulated in float64 for ``c = 0..n`` at trace time), so ``group_size`` and ``k`` are static.

    Args:
      rewards: ``[N]`` rewards, ``N = num_groups * group_size``, each group contiguous.
      group_size: ``n`` (static int).  k: ``1 <= k <= n`` (static int).
      threshold: rewards ``>= threshold`` count as correct.
      return_info: also return ``{"zero_variance": [N] bool (members of groups with sigma = 0),
        "frac_zero_variance": scalar, "passk": [num_groups] float32 R per group}``.

    Returns:
      ``[N]`` float32 advantages (no gradient), or ``(advantages, info)``.
    """
    if not 1 <= k <= group_size:
        raise ValueError(f"k must be in [1, group_size={group_size}], got {k}")
    r = lax.stop_gradient(rewards)
    if r.ndim != 1 or r.shape[0] % group_size:
        raise ValueError(f"rewards must be [N] with N a multiple of group_size={group_size}, got {r.shape}")
    correct = (r >= threshold).reshape(-1, group_size)
    c = jnp.sum(correct.astype(jnp.int32), axis=1)
    r_bar, pos, neg = (jnp.asarray(t, _F32) for t in _passk_tables(group_size, k))
    adv = jnp.where(correct, pos[c][:, None], neg[c][:, None]).reshape(-1)
    if not return_info:
        return adv
    zero = (c == 0) | (group_size - c < k)
    info = {"zero_variance": jnp.repeat(zero, group_size), "frac_zero_variance": jnp.mean(zero.astype(_F32)),
            "passk": r_bar[c]}
    return adv, info


def overlong_penalty(lengths: jax.Array, *, max_len: int, cache_len: int = 0, factor: float = 1.0) -> jax.Array:
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13): a length reward added to the task reward.

    With ``L_max = max_len`` (the generation cap, ``grpo.max_new_tokens``) and ``L_cache = cache_len``:

        R_length(|y|) = 0                                       |y| <= L_max - L_cache
                      = ((L_max - L_cache) - |y|) / L_cache      L_max - L_cache < |y| <= L_max
                      = -1                                      |y| > L_max

    times ``factor`` (verl's ``overlong_buffer.penalty_factor``; 1 in the paper).  The ramp reaches -1 at
    ``|y| = L_max``, so a response cut at the cap gets the full penalty.  ``cache_len <= 0`` means
    ``max(max_len // 4, 1)`` (DAPO's recipe uses 4,096 of 20,480, a fifth).

    Args:
      lengths: ``[N]`` completion lengths in tokens (the sampler's ``out.lengths``, EOS included).
      max_len, cache_len: static ints, ``1 <= cache_len <= max_len``.

    Returns:
      ``[N]`` float32 penalties in ``[-factor, 0]``.
    """
    if cache_len <= 0:
        cache_len = max(max_len // 4, 1)
    if not 1 <= cache_len <= max_len:
        raise ValueError(f"cache_len must be in [1, max_len={max_len}], got {cache_len}")
    n = jnp.asarray(lengths).astype(_F32)
    start = float(max_len - cache_len)
    ramp = (start - n) / float(cache_len)
    pen = jnp.where(n <= start, 0.0, jnp.where(n <= max_len, ramp, -1.0))
    return (pen * factor).astype(_F32)


def rollout_correction_weights(old_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array, *, mode: str,
                               threshold: float = 2.0, log_ratio_clamp: float = 20.0) -> tuple[jax.Array, dict]:
    """Per-token weights on the policy-gradient term correcting the sampler/trainer mismatch: truncated or masked
    importance sampling as TRL (``vllm_importance_sampling_correction`` / ``_mode`` / ``_cap``) and verl (PR #2953
    TIS, PR #3694 rollout correction) implement it (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
    Off-Policy RL Training").

    The tokens were drawn by the sampler, ``pi_sampler = exp(sampler_logp)``; the loss is written for the trainer's
    behaviour policy ``pi_old = exp(old_logp)`` (the trainer's log-prob at the rollout temperature: the current one,
    detached, for an on-policy update; the recomputed old log-probs otherwise).  With ``rho_t = pi_old / pi_sampler``
    (its log clamped to ``+-log_ratio_clamp``, as verl) and ``C = threshold``:

        token_truncate   w_t = min(rho_t, C)                 (TIS)
        token_mask       w_t = rho_t * 1[rho_t <= C]         (masked IS)
        sequence_mask    w_t = rho_i * 1[rho_i <= C]         rho_i = prod_t rho_t = exp(sum_t m_t log rho_t)
        none             w_t = 1

    These are TRL's definitions: the masked modes keep the IS weight on the tokens (sequences) they keep and mask
    only above ``C`` (verl's rejection sampling ``rollout_rs`` keeps a two-sided band ``[lower, upper]`` instead, at
    weight 1); the sequence ratio is the product over the sequence's tokens (TRL; verl's ``geometric`` mode is the
    per-token geometric mean), its log clamped to ``+-log_ratio_clamp`` as verl does.  One row is one sequence.
    All weights are detached.

    Args:
      old_logp, sampler_logp, mask: ``[B, T]``.  mode: one of :data:`ROLLOUT_CORRECTIONS`.  threshold: ``C``.

    Returns:
      ``(weights [B, T] float32, metrics)``; metrics over ``mask``: ``mismatch_kl`` (token mean of the k3 estimator
      ``rho - 1 - log rho`` of ``KL(pi_sampler || pi_old)``, the tokens being the sampler's), ``ratio_max`` /
      ``ratio_min`` (largest / smallest ``rho_t``; ``rho_i`` over non-empty rows for ``sequence_mask``; -inf / inf
      when nothing is masked in), ``capped_frac`` (fraction of tokens whose weight the threshold truncated or
      zeroed), ``weight_mean`` (token mean of ``w``).
    """
    correction = _lookup(ROLLOUT_CORRECTIONS, "rollout_correction", mode)
    m = mask.astype(_F32)
    log_rho = jnp.clip(lax.stop_gradient(old_logp).astype(_F32) - lax.stop_gradient(sampler_logp).astype(_F32),
                       -log_ratio_clamp, log_ratio_clamp)
    rho = jnp.exp(log_rho)
    count = jnp.sum(m)

    def mean(x):
        return safe_divide(jnp.sum(x * m), count)

    metrics = {"mismatch_kl": mean(rho - 1.0 - log_rho)}
    w, capped, ratio, valid = correction.fn(rho, log_rho, m, threshold, log_ratio_clamp)
    metrics.update(ratio_max=jnp.max(jnp.where(valid, ratio, -jnp.inf)),
                   ratio_min=jnp.min(jnp.where(valid, ratio, jnp.inf)),
                   capped_frac=mean(capped.astype(_F32)), weight_mean=mean(w))
    return lax.stop_gradient(w.astype(_F32)), metrics


@register_rollout_correction("none")
def _no_correction(rho, log_rho, m, threshold, log_ratio_clamp):
    return jnp.ones_like(rho), jnp.zeros(rho.shape, bool), rho, m > 0


@register_rollout_correction("token_truncate")
def _token_truncate(rho, log_rho, m, threshold, log_ratio_clamp):
    return jnp.minimum(rho, threshold), rho > threshold, rho, m > 0


@register_rollout_correction("token_mask")
def _token_mask(rho, log_rho, m, threshold, log_ratio_clamp):
    capped = rho > threshold
    return jnp.where(capped, 0.0, rho), capped, rho, m > 0


@register_rollout_correction("sequence_mask")
def _sequence_mask(rho, log_rho, m, threshold, log_ratio_clamp):
    seq_log = jnp.clip(jnp.sum(log_rho * m, axis=-1, keepdims=True), -log_ratio_clamp, log_ratio_clamp)
    seq = jnp.exp(seq_log)
    capped = jnp.broadcast_to(seq > threshold, rho.shape)
    w = jnp.broadcast_to(jnp.where(seq > threshold, 0.0, seq), rho.shape)
    return w, capped, seq[:, 0], jnp.any(m > 0, axis=-1)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token KL estimate from sampled-token log-probs, ``d = logp - ref_logp`` (tokens drawn from the policy).

    ``k1 = d``; ``k2 = d^2 / 2``; ``k3 = exp(-d) + d - 1`` (>= 0), computed as verl does: ``d`` clamped to
    ``[-20, 20]`` and the value to ``[-10, 10]`` (so one token with a wild ratio cannot dominate the penalty;
    outside the clamps its gradient is 0).
    Shapes: any, same for both; float32 out.
    """
    d = logp.astype(_F32) - lax.stop_gradient(ref_logp).astype(_F32)
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        dc = jnp.clip(d, -20.0, 20.0)
        return jnp.clip(jnp.exp(-dc) + dc - 1.0, -10.0, 10.0)
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def aggregate(per_token: jax.Array, mask: jax.Array, mode: str, *, num_tokens=None, num_seqs=None,
              max_len: int | None = None) -> jax.Array:
    """Reduce a ``[B, T]`` per-token loss to a scalar with one of :data:`AGGREGATIONS` (module docstring).

    ``num_tokens`` / ``num_seqs``: global-batch denominators (default: this batch's masked tokens / sequences
    with at least one token).  ``max_len``: the constant of ``seq-mean-token-sum-norm`` (default ``T``).
    """
    m = mask.astype(_F32)
    lm = per_token.astype(_F32) * m
    seq_len = jnp.sum(m, axis=-1)
    n_tok = jnp.sum(m) if num_tokens is None else num_tokens
    n_seq = jnp.sum((seq_len > 0).astype(_F32)) if num_seqs is None else num_seqs
    if mode == "token-mean":
        return safe_divide(jnp.sum(lm), n_tok)
    if mode == "seq-mean-token-mean":
        return safe_divide(jnp.sum(safe_divide(jnp.sum(lm, axis=-1), seq_len)), n_seq)
    if mode == "seq-mean-token-sum":
        return safe_divide(jnp.sum(lm), n_seq)
    if mode == "seq-mean-token-sum-norm":
        length = per_token.shape[-1] if max_len is None else max_len
        return safe_divide(jnp.sum(lm), n_seq * jnp.asarray(length, _F32))
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")


def grpo_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
              ref_logp: jax.Array | None = None, clip_low: float = 0.2, clip_high: float = 0.2,
              dual_clip: float | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
              aggregation: str = "token-mean", max_len: int | None = None, log_ratio_clamp: float = 20.0,
              entropy: jax.Array | None = None, entropy_coef: float = 0.0, num_tokens=None,
              num_seqs=None, policy_loss: str = "ppo_clip", pg_weight: jax.Array | None = None
              ) -> tuple[jax.Array, dict]:
    """Policy-gradient loss (PPO-clip / GRPO / DAPO / Dr. GRPO, GSPO or CISPO), optional KL to a reference and
    entropy bonus.

    Per token, ``policy_loss="ppo_clip"`` (default), with ``r = exp(clip(logp - old_logp, -log_ratio_clamp,
    log_ratio_clamp))``:

        l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
        l = min(l, -A * dual_clip)        where A < 0 (dual clip, when ``dual_clip`` is set, > 1)

    ``policy_loss="gspo"`` (Zheng et al. 2025, "Group Sequence Policy Optimization", GSPO-token form): the same
    clipped surrogate with the sequence-level ratio ``s_i = exp(mean_t (logp - old_logp))`` over row ``i``'s masked
    tokens (one row is one sequence, so the row mean is exact under any micro-batching), written per token as
    ``s_{i,t} = sg[s_i] * pi / sg[pi]`` (its log clamped at 10 as verl): the value is ``s_i``, the gradient flows
    per token, ``d s_{i,t} / d logp_t = s_i``, and the clip decision is the sequence's.  With
    ``seq-mean-token-mean`` (the paper's and verl's aggregation) its gradient equals that of the sequence-level
    GSPO objective ``(1 / G) sum_i max(-A s_i, -A clip(s_i))``.  The paper's clip ranges are tiny (3e-4 / 4e-4);
    pass them as ``clip_low`` / ``clip_high``.  No dual clip (as verl's ``gspo``).

    ``policy_loss="cispo"`` (MiniMax-M1, Chen et al. 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with
    Lightning Attention", eqs. 4-5): REINFORCE with a clipped, detached importance weight,

        l = -sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * logp

    so every token keeps a gradient (``-w A`` per token); the value is not the PPO surrogate (it carries ``logp``).
    MiniMax bounds only the top (``clip_low >= 1`` removes the lower bound).  No dual clip.

    Then, for every variant, ``l *= pg_weight`` (detached per-token weights: the sampler/trainer mismatch
    correction of :func:`rollout_correction_weights`, a high-entropy-token selection mask), and
    ``l += kl_coef * k(logp, ref_logp) - entropy_coef * entropy`` (the weights act on the policy-gradient term only,
    as TRL and verl apply theirs), then :func:`aggregate` with ``aggregation``.  With ``old_logp == logp``
    (on-policy) every variant's gradient is ``-A * grad log pi`` per token (times ``pg_weight``).

    Args:
      logp: ``[B, T]`` float32 log-probs of the sampled tokens under the current policy (with gradient).
      old_logp: ``[B, T]`` behaviour-policy log-probs (no gradient).
      advantages: ``[B]`` (one per response, broadcast over tokens) or ``[B, T]``.
      mask: ``[B, T]`` response tokens.
      ref_logp: ``[B, T]`` reference log-probs; needed when ``kl_coef != 0``.
      clip_low, clip_high: ratio bounds ``1 - clip_low`` and ``1 + clip_high`` of the chosen ``policy_loss``
        (clip-higher: ``clip_high > clip_low``).
      dual_clip: ``c > 1`` caps the loss of negative-advantage tokens at ``-A c`` (``ppo_clip`` only); ``None``
        disables.
      kl_estimator: ``"k1" | "k2" | "k3"`` (see :func:`kl_penalty`).
      aggregation, max_len, num_tokens, num_seqs: see :func:`aggregate`.
      entropy: optional ``[B, T]`` token entropies (logged; used with ``entropy_coef``).
      policy_loss: one of :data:`POLICY_LOSSES`.
      pg_weight: optional ``[B, T]`` weights on the policy-gradient term (detached).

    Returns:
      ``(loss, metrics)``: scalar float32; metrics (token means over ``mask`` of this batch): ``pg_loss``,
      ``clipfrac_low`` / ``clipfrac_high`` (``ppo_clip`` / ``gspo``: A<0 and r<1-clip_low / A>0 and r>1+clip_high,
      the tokens whose gradient the clip removes, with ``r = s_i`` for GSPO; ``cispo``: r<1-clip_low / r>1+clip_high,
      the tokens whose IS weight is clipped, either sign of A), ``clipfrac_dual`` (dual cap active),
      ``ratio_mean``/``ratio_min``/``ratio_max`` (of ``r``), ``ppo_kl`` (mean of old - new log-prob), ``kl`` (mean
      estimator value, with ``ref_logp``), ``entropy`` (with ``entropy``), ``num_tokens`` and ``num_seqs`` (this
      batch).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    policy = _lookup(POLICY_LOSSES, "policy_loss", policy_loss)
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if kl_coef and ref_logp is None:
        raise ValueError("kl_coef != 0 needs ref_logp")
    logp = logp.astype(_F32)
    old = lax.stop_gradient(old_logp).astype(_F32)
    adv = lax.stop_gradient(advantages).astype(_F32)
    if adv.ndim == 1:
        adv = adv[:, None]
    adv = jnp.broadcast_to(adv, logp.shape)
    m = mask.astype(_F32)
    term = policy.fn(logp, old, adv, m, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip,
                     log_ratio_clamp=log_ratio_clamp)
    pg, ratio_sg, low, high, dual_active = term
    if pg_weight is not None:
        pg = pg * lax.stop_gradient(pg_weight).astype(_F32)
    per_token = pg
    kwargs = dict(num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    count = jnp.sum(m)

    def mean(x):
        return safe_divide(jnp.sum(lax.stop_gradient(x).astype(_F32) * m), count)

    metrics = {"pg_loss": aggregate(pg, mask, aggregation, **kwargs)}
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, kl_estimator)
        metrics["kl"] = mean(kl)
        if kl_coef:
            per_token = per_token + kl_coef * kl
    if entropy is not None:
        metrics["entropy"] = mean(entropy)
        if entropy_coef:
            per_token = per_token - entropy_coef * entropy
    loss = aggregate(per_token, mask, aggregation, **kwargs)
    on = m > 0
    metrics.update(
        loss=loss,
        clipfrac_low=mean(low.astype(_F32)),
        clipfrac_high=mean(high.astype(_F32)),
        clipfrac_dual=mean(dual_active.astype(_F32)),
        ratio_mean=mean(ratio_sg),
        ratio_min=jnp.min(jnp.where(on, ratio_sg, jnp.inf)),
        ratio_max=jnp.max(jnp.where(on, ratio_sg, -jnp.inf)),
        ppo_kl=mean(old - logp),
        num_tokens=count,
        num_seqs=jnp.sum((jnp.sum(m, axis=-1) > 0).astype(_F32)),
    )
    return loss, metrics


# --- the policy losses -----------------------------------------------------------------------------------------------

def _clipped_surrogate(ratio, adv, clip_low, clip_high, dual_clip) -> PolicyTerm:
    """max(-A r, -A clip(r)) with the optional dual cap for A < 0; clip activity where the clip removes the
    gradient (A < 0 and r < 1 - clip_low, A > 0 and r > 1 + clip_high)."""
    ratio_sg = lax.stop_gradient(ratio)
    pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high))
    dual = jnp.zeros(ratio.shape, bool)
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual = (adv < 0) & (pg > cap)
        pg = jnp.where(adv < 0, jnp.minimum(pg, cap), pg)
    return PolicyTerm(pg, ratio_sg, (adv < 0) & (ratio_sg < 1.0 - clip_low), (adv > 0) & (ratio_sg > 1.0 + clip_high),
                      dual)


@register_policy_loss("ppo_clip", clip_fields=("clip_low", "clip_high"))
def ppo_clip_term(logp, old, adv, m, *, clip_low, clip_high, dual_clip, log_ratio_clamp) -> PolicyTerm:
    """PPO / GRPO / DAPO clip-higher, optional dual clip: the token ratio r = exp(logp - old), log clamped."""
    ratio = jnp.exp(jnp.clip(logp - old, -log_ratio_clamp, log_ratio_clamp))
    return _clipped_surrogate(ratio, adv, clip_low, clip_high, dual_clip)


@register_policy_loss("gspo", clip_fields=("gspo_clip_low", "gspo_clip_high"))
def gspo_term(logp, old, adv, m, *, clip_low, clip_high, dual_clip, log_ratio_clamp) -> PolicyTerm:
    """GSPO-token: the sequence ratio's value with per-token gradients; no dual clip (as verl's gspo)."""
    seq_delta = safe_divide(jnp.sum((logp - old) * m, axis=-1, keepdims=True), jnp.sum(m, axis=-1, keepdims=True))
    log_ratio = jnp.minimum((logp - lax.stop_gradient(logp)) + lax.stop_gradient(seq_delta), GSPO_LOG_RATIO_MAX)
    return _clipped_surrogate(jnp.exp(log_ratio), adv, clip_low, clip_high, None)


@register_policy_loss("cispo", clip_fields=("cispo_clip_low", "cispo_clip_high"))
def cispo_term(logp, old, adv, m, *, clip_low, clip_high, dual_clip, log_ratio_clamp) -> PolicyTerm:
    """CISPO: -sg(clip(r)) A log pi; clip activity where the IS weight is clipped (either sign of A)."""
    ratio_sg = lax.stop_gradient(jnp.exp(jnp.clip(logp - old, -log_ratio_clamp, log_ratio_clamp)))
    pg = -adv * jnp.clip(ratio_sg, 1.0 - clip_low, 1.0 + clip_high) * logp
    return PolicyTerm(pg, ratio_sg, ratio_sg < 1.0 - clip_low, ratio_sg > 1.0 + clip_high,
                      jnp.zeros(logp.shape, bool))


# --- the advantage estimators ----------------------------------------------------------------------------------------

@register_advantage_estimator("grpo")
def _group_relative(rewards, group_size: int, *, scale: str = "group", k: int = 1):
    return grpo_advantages(rewards, group_size, scale=scale, return_info=True)


@register_advantage_estimator("passk", uses_k=True)
def _passk(rewards, group_size: int, *, scale: str = "group", k: int = 1):
    return passk_advantages(rewards, group_size, k, return_info=True)


def estimate_advantages(estimator: str, rewards, group_size: int, *, scale: str = "group", k: int = 1):
    """(advantages [N], info) of the registered `estimator` ("grpo" uses `scale`, "passk" uses `k`)."""
    return _lookup(ADVANTAGE_ESTIMATORS, "advantage_estimator", estimator).fn(rewards, group_size, scale=scale, k=k)
