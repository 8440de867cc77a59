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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from exploresft_jax.losses.reduce import safe_divide

_F32 = jnp.float32
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


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
              num_seqs=None) -> tuple[jax.Array, dict]:
    """Clipped surrogate policy loss (PPO / GRPO / DAPO / Dr. GRPO), optional KL to a reference and entropy bonus.

    Per token, with ``r = exp(clip(logp - old_logp, -log_ratio_clamp, log_ratio_clamp))``:

        l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
        l = min(l, -A * dual_clip)        where A < 0 (dual clip, when ``dual_clip`` is set, > 1)
        l += kl_coef * k(logp, ref_logp) - entropy_coef * entropy

    then :func:`aggregate` with ``aggregation``.  With ``old_logp == logp`` (on-policy) the gradient is
    ``-A * grad log pi`` per token.

    Args:
      logp: ``[B, T]`` float32 log-probs of the sampled tokens under the current policy (with gradient).
      old_logp: ``[B, T]`` behaviour-policy log-probs (no gradient).
      advantages: ``[B]`` (one per response, broadcast over tokens) or ``[B, T]``.
      mask: ``[B, T]`` response tokens.
      ref_logp: ``[B, T]`` reference log-probs; needed when ``kl_coef != 0``.
      clip_low, clip_high: ratio bounds ``1 - clip_low`` and ``1 + clip_high`` (clip-higher: ``clip_high >
        clip_low``).
      dual_clip: ``c > 1`` caps the loss of negative-advantage tokens at ``-A c``; ``None`` disables.
      kl_estimator: ``"k1" | "k2" | "k3"`` (see :func:`kl_penalty`).
      aggregation, max_len, num_tokens, num_seqs: see :func:`aggregate`.
      entropy: optional ``[B, T]`` token entropies (logged; used with ``entropy_coef``).

    Returns:
      ``(loss, metrics)``: scalar float32; metrics (token means over ``mask`` of this batch): ``pg_loss``,
      ``clipfrac_low`` (A<0 and r<1-clip_low), ``clipfrac_high`` (A>0 and r>1+clip_high), ``clipfrac_dual``
      (dual cap active), ``ratio_mean``/``ratio_min``/``ratio_max``, ``ppo_kl`` (mean of old - new
      log-prob), ``kl`` (mean estimator value, with ``ref_logp``), ``entropy`` (with ``entropy``),
      ``num_tokens`` and ``num_seqs`` (this batch).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
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
    log_ratio = jnp.clip(logp - old, -log_ratio_clamp, log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = jnp.maximum(pg1, pg2)
    dual_active = jnp.zeros(pg.shape, bool)
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual_active = (adv < 0) & (pg > cap)
        pg = jnp.where(adv < 0, jnp.minimum(pg, cap), pg)
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
    ratio_sg = lax.stop_gradient(ratio)
    metrics.update(
        loss=loss,
        clipfrac_low=mean(((adv < 0) & (ratio_sg < 1.0 - clip_low)).astype(_F32)),
        clipfrac_high=mean(((adv > 0) & (ratio_sg > 1.0 + clip_high)).astype(_F32)),
        clipfrac_dual=mean(dual_active.astype(_F32)),
        ratio_mean=mean(ratio_sg),
        ratio_min=jnp.min(jnp.where(on, ratio_sg, jnp.inf)),
        ratio_max=jnp.max(jnp.where(on, ratio_sg, -jnp.inf)),
        ppo_kl=mean(old - logp),
        num_tokens=count,
        num_seqs=jnp.sum((jnp.sum(m, axis=-1) > 0).astype(_F32)),
    )
    return loss, metrics
