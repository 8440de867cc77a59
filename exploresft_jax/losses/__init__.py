"""Loss functions (pure, jit-able): token statistics, SFT, OXA, CurioSFT, baselines and GRPO.

Convention: ``logits[b, t]`` scores ``labels[b, t]`` (inputs already shifted); ``mask[b, t]`` is 1 on tokens
that count.  Every loss returns ``(loss, metrics_dict)``; token-mean losses accept a global ``denominator``
(or ``num_tokens`` / ``num_seqs`` / ``num_positive`` / ``num_negative``) and report their sums, so that
gradient accumulation reproduces the global-batch result.  The ``*_from_logprobs`` / ``*_from_stats`` forms
take per-token statistics from :func:`chunked_token_stats` instead of ``[B, T, V]`` logits.
"""

from exploresft_jax.losses.baselines import (
    dft_loss,
    dft_loss_from_logprobs,
    entropy_regularized_sft_loss,
    entropy_regularized_sft_loss_from_stats,
    gem_loss,
    label_smoothing_loss,
    top_fraction_mask,
)
from exploresft_jax.losses.curio import (
    chunked_curio_teacher,
    curio_sft_loss,
    curio_sft_loss_from_divergence,
    curio_sft_loss_from_logprobs,
    curio_temperatures,
)
from exploresft_jax.losses.grpo import (
    aggregate,
    grpo_advantages,
    grpo_loss,
    kl_penalty,
    overlong_penalty,
    passk_advantages,
    rollout_correction_weights,
)
from exploresft_jax.losses.oxa import (
    oxa_loss,
    oxa_loss_from_logprobs,
    oxa_loss_from_token_weights,
    perplexity_token_weights,
    perplexity_weights,
    row_sample_norm,
    segment_means,
    unlikelihood_loss,
    unlikelihood_per_token,
)
from exploresft_jax.losses.reduce import masked_sum_and_count, safe_divide
from exploresft_jax.losses.sft import sft_loss, sft_loss_from_logprobs
from exploresft_jax.losses.token_stats import chunked_token_stats, naive_token_stats, token_entropy, token_logprobs

__all__ = [
    # the public API (README "Using the losses")
    "token_logprobs",
    "token_entropy",
    "chunked_token_stats",
    "sft_loss",
    "unlikelihood_loss",
    "oxa_loss",
    "curio_temperatures",
    "curio_sft_loss",
    "entropy_regularized_sft_loss",
    "dft_loss",
    "grpo_advantages",
    "grpo_loss",
    # extras
    "naive_token_stats",
    "masked_sum_and_count",
    "safe_divide",
    "sft_loss_from_logprobs",
    "unlikelihood_per_token",
    "perplexity_weights",
    "oxa_loss_from_logprobs",
    "oxa_loss_from_token_weights",
    "perplexity_token_weights",
    "row_sample_norm",
    "segment_means",
    "curio_sft_loss_from_logprobs",
    "curio_sft_loss_from_divergence",
    "chunked_curio_teacher",
    "entropy_regularized_sft_loss_from_stats",
    "top_fraction_mask",
    "dft_loss_from_logprobs",
    "gem_loss",
    "label_smoothing_loss",
    "kl_penalty",
    "aggregate",
    "rollout_correction_weights",
    "passk_advantages",
    "overlong_penalty",
]
