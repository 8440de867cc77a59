"""Baseline SFT objectives: entropy-regularised SFT (all tokens or the top-rho fraction by entropy), DFT,
GEM (linear) and label smoothing.  All token means over ``mask``; all softmax math in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from exploresft_jax.losses.reduce import safe_divide
from exploresft_jax.losses.token_stats import token_entropy, token_logprobs

_F32 = jnp.float32


def top_fraction_mask(values: jax.Array, mask: jax.Array, fraction: float) -> jax.Array:
    """Mask of the ``ceil(fraction * n)`` largest ``values`` among the ``n`` masked positions (ties at the
    threshold are all kept).  No gradient.  values, mask: ``[B, T]``; returns ``[B, T]`` float32 0/1."""
    m = mask.astype(bool)
    if fraction >= 1.0:
        return m.astype(_F32)
    v = jnp.where(m, lax.stop_gradient(values).astype(_F32), -jnp.inf).reshape(-1)
    n = jnp.sum(m)
    k = jnp.maximum(jnp.ceil(fraction * n).astype(jnp.int32), 1)
    desc = -jnp.sort(-v)
    thr = desc[jnp.clip(k - 1, 0, v.shape[0] - 1)]
    return (m & (values >= thr)).astype(_F32)


def entropy_regularized_sft_loss_from_stats(logprob: jax.Array, entropy: jax.Array, mask: jax.Array, *, coef: float,
                                            top_fraction: float = 1.0, denominator=None, selected=None,
                                            selected_denominator=None) -> tuple[jax.Array, dict]:
    """``mean_t(-logprob) - coef * mean_{t in S}(entropy)`` from per-token statistics (chunked-head friendly).

    ``S`` is every masked token when ``top_fraction = 1`` and otherwise the ``top_fraction`` of masked tokens
    with the highest entropy in this batch (selection detached), or the given ``selected`` mask (a selection made
    over a larger batch, e.g. a whole optimizer step).  The bonus is a sum over ``S`` divided by
    ``selected_denominator`` (default: the size of ``S`` in this batch; pass the global count to accumulate
    micro-batches exactly).

    Args:
      logprob, entropy: ``[B, T]`` float32 (entropy must carry gradient for the bonus to act).
      mask: ``[B, T]``.  coef: entropy coefficient (beta).  denominator: optional global token count for the
      CE term.  selected: optional ``[B, T]`` 0/1 mask replacing the top-fraction selection.
      selected_denominator: optional scalar divisor of the bonus.

    Returns:
      ``(loss, metrics)``: scalar float32; metrics ``nll``, ``entropy`` (mean over all masked tokens),
      ``entropy_selected`` (the bonus term, detached), ``selected_fraction``, ``nll_sum``, ``token_count``.
    """
    m = mask.astype(_F32)
    sel = top_fraction_mask(entropy, mask, top_fraction) if selected is None else selected.astype(_F32)
    nll_sum, count = jnp.sum(-logprob * m), jnp.sum(m)
    ent_sel = safe_divide(jnp.sum(entropy * sel), jnp.sum(sel) if selected_denominator is None
                          else selected_denominator)
    loss = safe_divide(nll_sum, count if denominator is None else denominator) - coef * ent_sel
    return loss, {"loss": loss, "nll": safe_divide(nll_sum, count), "nll_sum": nll_sum, "token_count": count,
                  "entropy": safe_divide(jnp.sum(lax.stop_gradient(entropy) * m), count),
                  "entropy_selected": lax.stop_gradient(ent_sel), "selected_fraction": safe_divide(jnp.sum(sel), count)}


def entropy_regularized_sft_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, *, coef: float,
                                 top_fraction: float = 1.0, denominator=None) -> tuple[jax.Array, dict]:
    """Entropy-regularised SFT on ``[B, T, V]`` logits; see :func:`entropy_regularized_sft_loss_from_stats`."""
    return entropy_regularized_sft_loss_from_stats(token_logprobs(logits, labels), token_entropy(logits), mask,
                                                   coef=coef, top_fraction=top_fraction, denominator=denominator)


def dft_loss_from_logprobs(logprob: jax.Array, mask: jax.Array, *, denominator=None) -> tuple[jax.Array, dict]:
    """Dynamic fine-tuning: ``mean_t -stop_gradient(p(y_t)) * log p(y_t)``.  logprob, mask ``[B, T]``."""
    m = mask.astype(_F32)
    count = jnp.sum(m)
    w = lax.stop_gradient(jnp.exp(logprob))
    s = jnp.sum(-w * logprob * m)
    loss = safe_divide(s, count if denominator is None else denominator)
    return loss, {"loss": loss, "dft_sum": s, "token_count": count, "nll": safe_divide(jnp.sum(-logprob * m), count),
                  "weight": safe_divide(jnp.sum(w * m), count)}


def dft_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, *, denominator=None) -> tuple[jax.Array, dict]:
    """DFT (Wu et al. 2025) on ``[B, T, V]`` logits: CE weighted per token by the detached label probability.

    Returns ``(loss, metrics)``: scalar float32; metrics ``nll`` (plain CE token mean), ``weight`` (mean p(y)),
    ``dft_sum``, ``token_count``."""
    return dft_loss_from_logprobs(token_logprobs(logits, labels), mask, denominator=denominator)


def gem_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, *, beta: float = 0.7,
             denominator=None) -> tuple[jax.Array, dict]:
    """GEM with the linear ``h``: per token ``-(log p(y) - sum_v q(v) log p(v))``, ``q = stop_grad(softmax(z/beta))``.

    Its gradient with respect to the logits is ``q - onehot(y)``: the label is pushed up as in CE, but the
    other tokens are pushed down in proportion to the sharpened ``q`` rather than ``p``.

    Args:
      logits: ``[B, T, V]``.  labels: ``[B, T]`` int.  mask: ``[B, T]``.  beta: temperature of ``q``.

    Returns:
      ``(loss, metrics)``: scalar float32 token mean; metrics ``nll``, ``gem_sum``, ``token_count``.
    """
    z = logits.astype(_F32)
    log_p = jax.nn.log_softmax(z, axis=-1)
    q = lax.stop_gradient(jax.nn.softmax(z / beta, axis=-1))
    lp = jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    per = -(lp - jnp.sum(q * log_p, axis=-1))
    m = mask.astype(_F32)
    count = jnp.sum(m)
    s = jnp.sum(per * m)
    loss = safe_divide(s, count if denominator is None else denominator)
    return loss, {"loss": loss, "gem_sum": s, "token_count": count, "nll": safe_divide(jnp.sum(-lp * m), count)}


def label_smoothing_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, *, smoothing: float = 0.1,
                         denominator=None) -> tuple[jax.Array, dict]:
    """``(1 - smoothing) * CE + smoothing * mean_v(-log p(v))`` per token, token mean over ``mask``.

    Args:
      logits: ``[B, T, V]``.  labels: ``[B, T]`` int.  mask: ``[B, T]``.  smoothing: epsilon in ``[0, 1]``.

    Returns:
      ``(loss, metrics)``: scalar float32; metrics ``nll`` (plain CE token mean), ``ls_sum``, ``token_count``.
    """
    log_p = jax.nn.log_softmax(logits.astype(_F32), axis=-1)
    lp = jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    per = -(1.0 - smoothing) * lp - smoothing * jnp.mean(log_p, axis=-1)
    m = mask.astype(_F32)
    count = jnp.sum(m)
    s = jnp.sum(per * m)
    loss = safe_divide(s, count if denominator is None else denominator)
    return loss, {"loss": loss, "ls_sum": s, "token_count": count, "nll": safe_divide(jnp.sum(-lp * m), count)}


