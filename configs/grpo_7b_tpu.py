"""GRPO for Qwen2.5-Math-7B on a TPU v5p-8: 64 prompts x 8 rollouts, 16,384-token responses.

The recipe is `exploresft_jax/configs/grpo_7b_tpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import grpo_7b_tpu


def get_config():
    return grpo_7b_tpu.get_config()
