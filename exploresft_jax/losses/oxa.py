"""OXA: cross-entropy on verified low-confidence teacher data plus token-level unlikelihood on confident
wrong self-generated samples.

Per sample ``i`` with response tokens ``t``:

    ce_i = mean_t -log p(y_t)                                 (positive samples)
    ul_i = mean_t -log(1 - min(p(y_t), 1 - eps))              (negative samples)
    L    = sum_{i pos} w_i ce_i / n_pos  +  ul_weight * sum_{i neg} w_i ul_i / n_neg

Both terms are computed for every batch, whatever mix of positive and negative samples it holds (the
released trainer computes only one term per micro-batch, which is only right at one sample per device).
``n_pos`` / ``n_neg`` default to the counts in this batch and can be passed from the global batch, so that
summing micro-batch losses reproduces the global loss.  ``w_i`` defaults to 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from exploresft_jax.losses.sft import safe_divide
from exploresft_jax.losses.token_stats import token_entropy, token_logprobs

_F32 = jnp.float32
_LOG_HALF = -math.log(2.0)


def unlikelihood_per_token(logprob: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``-log(1 - min(p, 1 - eps))`` from ``logprob = log p``, elementwise, float32.

    The log-prob is clamped at ``log(1 - eps)`` first, so tokens with ``p > 1 - eps`` get zero gradient and
    the value is bounded by ``-log(eps)``.  ``log(1 - p)`` is computed as ``log1p(-exp(lp))`` for
    ``p < 1/2`` and as ``log(-expm1(lp))`` for ``p >= 1/2`` (each accurate on its side).  The gradient with
    respect to the label logit is ``p`` (below the clamp).

    Args:
      logprob: any shape, log-probabilities (nats, <= 0).
      eps: clamp margin.

    Returns:
      same shape, float32, ``>= 0``.
    """
    lp = jnp.minimum(logprob.astype(_F32), math.log1p(-eps))
    small = lp < _LOG_HALF
    # Feed each branch only inputs from its own side so the unused branch cannot produce inf/nan gradients.
    lp_small = jnp.where(small, lp, _LOG_HALF - 1.0)
    lp_big = jnp.where(small, _LOG_HALF, lp)
    return jnp.where(small, -jnp.log1p(-jnp.exp(lp_small)), -jnp.log(-jnp.expm1(lp_big)))


def per_sample_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token mean of ``values`` within each sample.  values, mask: ``[B, T]``.  Returns ``(mean [B], count [B])``;
    a sample with no counted tokens has mean 0."""
    m = mask.astype(_F32)
    count = jnp.sum(m, axis=-1)
    return safe_divide(jnp.sum(values.astype(_F32) * m, axis=-1), count), count


def unlikelihood_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, *, eps: float = 1e-6,
                      denominator=None) -> tuple[jax.Array, dict]:
    """Token-level unlikelihood loss, token mean per sample, then mean over samples.

    Args:
      logits: ``[B, T, V]`` (softmax in float32).  labels: ``[B, T]`` int.  mask: ``[B, T]`` 1 on counted tokens.
      eps: probability clamp (see :func:`unlikelihood_per_token`).
      denominator: number of samples to divide by (default: samples of this batch with at least one token).

    Returns:
      ``(loss, metrics)``; scalar float32 loss; metrics ``ul_sum`` (sum of per-sample means), ``num_samples``.
    """
    ul_tok = unlikelihood_per_token(token_logprobs(logits, labels), eps)
    per, count = per_sample_mean(ul_tok, mask)
    n = jnp.sum((count > 0).astype(_F32))
    ul_sum = jnp.sum(per)
    loss = safe_divide(ul_sum, n if denominator is None else denominator)
    return loss, {"loss": loss, "ul_sum": ul_sum, "num_samples": n}


def perplexity_weights(logprob: jax.Array, mask: jax.Array, *, alpha: float = 1.0, valid: jax.Array | None = None,
                       max_weight: float | None = None) -> jax.Array:
    """Confidence reweighting (an extension beyond the OXA paper): one weight per sample from its perplexity.

    ``w_i = ppl_i ** alpha / mean_j(ppl_j ** alpha)`` over the valid samples, with
    ``ppl_i = exp(-mean_t logprob[i, t])``.  ``alpha > 0`` up-weights low-confidence (high-perplexity)
    samples, in the spirit of OXA's selection; ``alpha < 0`` up-weights confident ones; ``alpha = 0`` gives
    all ones.  Weights average to 1 over the valid samples (so the loss scale is unchanged), are optionally
    clipped at ``max_weight`` (after normalisation), are 0 on invalid samples, and carry no gradient.
    Pass log-probs from the base model (as OXA's selection does) or from the current model.

    Args:
      logprob: ``[B, T]`` label log-probs.  mask: ``[B, T]`` counted tokens.
      valid: ``[B]`` bool, samples that take part (default: samples with at least one token).

    Returns:
      ``[B]`` float32 weights.
    """
    mean_lp, count = per_sample_mean(jax.lax.stop_gradient(logprob), mask)
    valid = (count > 0) if valid is None else (valid & (count > 0))
    n = jnp.maximum(jnp.sum(valid.astype(_F32)), 1.0)
    logits = jnp.where(valid, -alpha * mean_lp, -jnp.inf)  # log ppl^alpha
    w = jax.nn.softmax(logits) * n
    w = jnp.where(valid, w, 0.0)
    if max_weight is not None:
        w = jnp.minimum(w, max_weight)
    return w


def oxa_loss_from_logprobs(logprob: jax.Array, mask: jax.Array, is_negative: jax.Array, *, ul_weight: float = 1e-4,
                           eps: float = 1e-6, sample_weight: jax.Array | None = None, num_positive=None,
                           num_negative=None, entropy: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """OXA objective from per-token label log-probs (e.g. from ``chunked_token_stats``).

    Args:
      logprob: ``[B, T]`` float32 label log-probs.
      mask: ``[B, T]`` 1 on response tokens.
      is_negative: ``[B]`` bool, True for unlikelihood (wrong) samples, False for cross-entropy samples.
      ul_weight: lambda in front of the UL term (release: 1e-4).
      eps: UL probability clamp (release: 1e-6).
      sample_weight: optional ``[B]`` weights multiplying each sample's token mean (e.g.
        :func:`perplexity_weights`); no gradient flows into them.
      num_positive, num_negative: optional denominators (positive / negative sample counts of the global
        batch).  Default: the counts of samples with at least one token in this batch.
      entropy: optional ``[B, T]`` token entropies, logged per group.

    Returns:
      ``(loss, metrics)``: scalar float32; metrics ``ce``, ``ul`` (the two group means), ``ce_sum``,
      ``ul_sum``, ``num_positive``, ``num_negative`` and, with ``entropy``, ``ce_entropy`` / ``ul_entropy``.
    """
    neg = is_negative.astype(bool)
    ce_i, count = per_sample_mean(-logprob, mask)
    ul_i, _ = per_sample_mean(unlikelihood_per_token(logprob, eps), mask)
    has = count > 0
    pos_f = (has & ~neg).astype(_F32)
    neg_f = (has & neg).astype(_F32)
    w = jnp.ones_like(ce_i) if sample_weight is None else jax.lax.stop_gradient(sample_weight.astype(_F32))
    ce_sum = jnp.sum(w * pos_f * ce_i)
    ul_sum = jnp.sum(w * neg_f * ul_i)
    n_pos, n_neg = jnp.sum(pos_f), jnp.sum(neg_f)
    ce = safe_divide(ce_sum, n_pos if num_positive is None else num_positive)
    ul = safe_divide(ul_sum, n_neg if num_negative is None else num_negative)
    loss = ce + ul_weight * ul
    metrics = {"loss": loss, "ce": ce, "ul": ul, "ce_sum": ce_sum, "ul_sum": ul_sum,
               "num_positive": n_pos, "num_negative": n_neg}
    if entropy is not None:
        m = mask.astype(_F32)
        for name, f in (("ce_entropy", pos_f), ("ul_entropy", neg_f)):
            mm = m * f[:, None]
            metrics[name] = safe_divide(jnp.sum(jax.lax.stop_gradient(entropy) * mm), jnp.sum(mm))
    return loss, metrics


def oxa_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, is_negative: jax.Array, *,
             ul_weight: float = 1e-4, eps: float = 1e-6, sample_weight: jax.Array | None = None,
             num_positive=None, num_negative=None) -> tuple[jax.Array, dict]:
    """OXA loss on materialised logits: ``CE(positives) + ul_weight * UL(negatives)`` (see module docstring).

    Args:
      logits: ``[B, T, V]`` (softmax in float32).  labels: ``[B, T]`` int.  mask: ``[B, T]``.
      is_negative: ``[B]`` bool.  Other arguments as in :func:`oxa_loss_from_logprobs`.

    Returns:
      ``(loss, metrics)`` as in :func:`oxa_loss_from_logprobs`, with per-group token entropies logged.
    """
    return oxa_loss_from_logprobs(token_logprobs(logits, labels), mask, is_negative, ul_weight=ul_weight, eps=eps,
                                  sample_weight=sample_weight, num_positive=num_positive,
                                  num_negative=num_negative, entropy=token_entropy(logits))
