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

Two forms compute the same objective.  The *row* form (:func:`oxa_loss_from_logprobs`, :func:`oxa_loss`,
:func:`perplexity_weights`) treats each row as one sample, with ``is_negative`` / ``sample_weight`` of shape
``[B]``.  The *token* form (:func:`oxa_loss_from_token_weights`, :func:`perplexity_token_weights`) takes every
per-sample quantity as a per-token array, so a row may hold several packed samples: ``sample_norm[b, t]`` is
``1 / (counted tokens of the sample owning token t)`` on counted tokens, and a per-sample mean summed over
samples is ``sum(value * mask * sample_norm)``.  The row form is implemented through the token form.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from exploresft_jax.losses.reduce import safe_divide
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
    return _normalised_ppl_weights(mean_lp, valid, jnp.ones_like(mean_lp), alpha, max_weight)


def _normalised_ppl_weights(mean_lp, valid, share, alpha, max_weight):
    """``n * exp(-alpha * mean_lp_e) / sum_e' share_e' exp(-alpha * mean_lp_e')`` over valid elements ``e``,
    with ``n = sum_e share_e`` over valid ones.  Elements are samples (``share`` = 1) or tokens (``share`` =
    the token's fraction of its sample, so each sample counts once); 0 on invalid elements."""
    share = jnp.where(valid, share.astype(_F32), 0.0)
    n = jnp.maximum(jnp.round(jnp.sum(share)), 1.0)
    score = jnp.where(valid, -alpha * mean_lp.astype(_F32), -jnp.inf)  # log ppl^alpha
    top = jnp.max(score)
    e = jnp.where(valid, jnp.exp(score - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    w = safe_divide(n * e, jnp.sum(share * e))
    if max_weight is not None:
        w = jnp.minimum(w, max_weight)
    return w


def row_sample_norm(mask: jax.Array) -> jax.Array:
    """``sample_norm`` for rows that are one sample each: ``mask / (counted tokens of the row)``.
    mask: ``[..., T]``; returns float32 of the same shape (0 on rows without counted tokens)."""
    m = mask.astype(_F32)
    return safe_divide(m, jnp.sum(m, axis=-1, keepdims=True))


def segment_means(values: jax.Array, mask: jax.Array, sample_norm: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Per-token mean of ``values`` over the counted tokens of that token's sample (packed segment).

    Args:
      values, mask, sample_norm: ``[..., T]``; segment_ids: ``[..., T]`` int, 1, 2, ... per sample of a row
        (0 on padding).

    Returns:
      float32 ``[..., T]``: on every token of a segment, ``sum_{t in segment} values * mask * sample_norm``.
    """
    t = values.shape[-1]
    rows = values.size // t
    ids = (jnp.arange(rows, dtype=jnp.int32)[:, None] * (t + 1)
           + jnp.clip(segment_ids.reshape(rows, t).astype(jnp.int32), 0, t)).reshape(-1)
    contrib = (values.astype(_F32) * mask.astype(_F32) * sample_norm.astype(_F32)).reshape(-1)
    sums = jax.ops.segment_sum(contrib, ids, num_segments=rows * (t + 1))
    return sums[ids].reshape(values.shape)


def perplexity_token_weights(logprob: jax.Array, mask: jax.Array, sample_norm: jax.Array, segment_ids: jax.Array, *,
                             alpha: float = 1.0, valid: jax.Array | None = None,
                             max_weight: float | None = None) -> jax.Array:
    """:func:`perplexity_weights` for packed rows: the weight of each token's sample, per token.

    Args:
      logprob, mask, sample_norm: ``[B, T]`` (see the module docstring for ``sample_norm``).
      segment_ids: ``[B, T]`` int, the sample of each token within its row (1, 2, ...; 0 on padding).
      valid: optional ``[B, T]`` bool, per token, True on tokens of samples that take part (default: all
        samples with counted tokens).

    Returns:
      ``[B, T]`` float32: on counted tokens, the weight of their sample (averaging 1 over valid samples);
      0 elsewhere.  No gradient.
    """
    lp = jax.lax.stop_gradient(logprob)
    mean_lp = segment_means(lp, mask, sample_norm, segment_ids)
    m = mask.astype(bool)
    valid = m if valid is None else (m & valid.astype(bool))
    return _normalised_ppl_weights(mean_lp, valid, mask.astype(_F32) * sample_norm, alpha, max_weight)


def oxa_loss_from_token_weights(logprob: jax.Array, mask: jax.Array, is_negative: jax.Array, sample_norm: jax.Array,
                                *, ul_weight: float = 1e-4, eps: float = 1e-6, sample_weight: jax.Array | None = None,
                                num_positive=None, num_negative=None,
                                entropy: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """OXA objective with every per-sample quantity given per token (packed rows; see the module docstring).

    Args:
      logprob: ``[..., T]`` float32 label log-probs.
      mask: ``[..., T]`` 1 on response tokens.
      is_negative: ``[..., T]`` bool / int, True on tokens of unlikelihood samples.
      sample_norm: ``[..., T]`` float32, ``1 / (counted tokens of the token's sample)`` on counted tokens.
      sample_weight: optional ``[..., T]`` weight of the token's sample; no gradient flows into it.
      num_positive, num_negative: optional denominators (sample counts of the global batch); default: the
        samples of this batch, ``round(sum(mask * sample_norm))`` per group.
      Other arguments and the returned ``(loss, metrics)`` as in :func:`oxa_loss_from_logprobs`.
    """
    m = mask.astype(_F32)
    neg = is_negative.astype(bool)
    share = m * sample_norm.astype(_F32)  # each sample's counted tokens sum to 1
    pos_share, neg_share = jnp.where(neg, 0.0, share), jnp.where(neg, share, 0.0)
    w = 1.0 if sample_weight is None else jax.lax.stop_gradient(sample_weight.astype(_F32))
    lp = logprob.astype(_F32)
    ce_sum = jnp.sum(-lp * w * pos_share)
    ul_sum = jnp.sum(unlikelihood_per_token(lp, eps) * w * neg_share)
    n_pos, n_neg = jnp.round(jnp.sum(pos_share)), jnp.round(jnp.sum(neg_share))
    ce = safe_divide(ce_sum, n_pos if num_positive is None else num_positive)
    ul = safe_divide(ul_sum, n_neg if num_negative is None else num_negative)
    loss = ce + ul_weight * ul
    metrics = {"loss": loss, "ce": ce, "ul": ul, "ce_sum": ce_sum, "ul_sum": ul_sum,
               "num_positive": n_pos, "num_negative": n_neg}
    if entropy is not None:
        ent = jax.lax.stop_gradient(entropy)
        for name, mm in (("ce_entropy", jnp.where(neg, 0.0, m)), ("ul_entropy", jnp.where(neg, m, 0.0))):
            metrics[name] = safe_divide(jnp.sum(ent * mm), jnp.sum(mm))
    return loss, metrics


def oxa_loss_from_logprobs(logprob: jax.Array, mask: jax.Array, is_negative: jax.Array, *, ul_weight: float = 1e-4,
                           eps: float = 1e-6, sample_weight: jax.Array | None = None, num_positive=None,
                           num_negative=None, entropy: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """OXA objective from per-token label log-probs (e.g. from ``chunked_token_stats``), one sample per row.

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
    per_token = lambda x: jnp.broadcast_to(jnp.asarray(x)[..., None], mask.shape)  # noqa: E731
    return oxa_loss_from_token_weights(
        logprob, mask, per_token(is_negative.astype(bool)), row_sample_norm(mask), ul_weight=ul_weight, eps=eps,
        sample_weight=None if sample_weight is None else per_token(sample_weight), num_positive=num_positive,
        num_negative=num_negative, entropy=entropy)


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
