"""Supervised fine-tuning cross-entropy with exact token means.

Every loss in this package that averages over tokens reports its ``(sum, count)`` pair in the metrics and
accepts ``denominator=``: pass the token count of the *global* batch and sum the per-micro-batch losses,
and the result equals the loss of the whole batch at once, whatever the micro-batching.
"""

from __future__ import annotations

import jax

from exploresft_jax.losses.reduce import masked_sum_and_count, safe_divide
from exploresft_jax.losses.token_stats import token_entropy, token_logprobs


def sft_loss_from_logprobs(logprob: jax.Array, mask: jax.Array, *, denominator=None,
                           entropy: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Token-mean negative log-likelihood from per-token label log-probs (e.g. from ``chunked_token_stats``).

    Args:
      logprob: ``[B, T]`` float32 label log-probs (nats).
      mask: ``[B, T]`` 1 on tokens that count.
      denominator: optional scalar token count of the global batch; default ``sum(mask)`` of this batch.
      entropy: optional ``[B, T]`` token entropies, only for the ``"entropy"`` metric.

    Returns:
      ``(loss, metrics)``: scalar float32 loss ``sum(-logprob * mask) / denominator``; metrics hold
      ``nll_sum`` and ``token_count`` (the exact pair to accumulate), ``nll`` (this batch's token mean) and
      ``entropy`` (token mean, when given).
    """
    nll_sum, count = masked_sum_and_count(-logprob, mask)
    den = count if denominator is None else denominator
    loss = safe_divide(nll_sum, den)
    metrics = {"loss": loss, "nll": safe_divide(nll_sum, count), "nll_sum": nll_sum, "token_count": count}
    if entropy is not None:
        metrics["entropy"] = safe_divide(masked_sum_and_count(entropy, mask)[0], count)
    return loss, metrics


def sft_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, *, denominator=None) -> tuple[jax.Array, dict]:
    """Cross-entropy averaged over the masked tokens.

    Args:
      logits: ``[B, T, V]`` any float dtype (softmax in float32); ``logits[b, t]`` scores ``labels[b, t]``.
      labels: ``[B, T]`` int token ids.
      mask: ``[B, T]`` 1 on counted tokens.
      denominator: optional global token count (see module docstring).

    Returns:
      ``(loss, metrics)`` as in :func:`sft_loss_from_logprobs`, with the token-mean entropy (nats) logged.
    """
    return sft_loss_from_logprobs(token_logprobs(logits, labels), mask, denominator=denominator,
                                  entropy=jax.lax.stop_gradient(token_entropy(logits)))
