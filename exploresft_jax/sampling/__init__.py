"""Jitted KV-cache sampling: strategies, the token-level `Sampler`, and the text-level `generate_text`.

    from exploresft_jax.sampling import Sampler, SamplingConfig, TopP
    out = Sampler(model).generate(prompt_ids, n=8, max_new_tokens=512, config=TopP(0.95, temperature=0.6),
                                  stop_ids=[151645, 151643], key=0)
    out.tokens, out.logprobs, out.entropy, out.lengths, out.finish_reason   # rows prompt-major
"""

from exploresft_jax.sampling.sampler import FINISH_LENGTH, FINISH_STOP, SampleOutput, Sampler
from exploresft_jax.sampling.strategies import (
    Greedy,
    MinP,
    SamplingConfig,
    Temperature,
    TopK,
    TopP,
    kept_probabilities,
    sample_tokens,
    truncated_logits,
)
from exploresft_jax.sampling.text import Completion, encode_prompts, generate_text

__all__ = [
    "Sampler", "SampleOutput", "FINISH_STOP", "FINISH_LENGTH",
    "SamplingConfig", "Greedy", "Temperature", "TopK", "TopP", "MinP",
    "truncated_logits", "sample_tokens", "kept_probabilities",
    "Completion", "encode_prompts", "generate_text",
]
