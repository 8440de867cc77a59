"""GRPO for Qwen2.5-Math-7B on one host of 8 NVIDIA H100 80 GB (FSDP over the 8 GPUs).

The recipe is `exploresft_jax/configs/grpo_7b_gpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import grpo_7b_gpu


def get_config():
    return grpo_7b_gpu.get_config()
