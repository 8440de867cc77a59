"""Loss functions (pure, jit-able): token statistics, SFT, OXA, CurioSFT, baselines and GRPO."""

from exploresft_jax.losses.token_stats import chunked_token_stats, naive_token_stats, token_entropy, token_logprobs

__all__ = ["chunked_token_stats", "naive_token_stats", "token_entropy", "token_logprobs"]
