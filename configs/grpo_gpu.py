"""grpo on one NVIDIA H100 80 GB or H200: the same recipe as configs/grpo_tpu.py on a (1, 1, 1) mesh,
accumulated in micro-batches of 2 sequences; measured fit in the recipe's docstring.

The recipe is `exploresft_jax/configs/grpo_gpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import grpo_gpu


def get_config():
    return grpo_gpu.get_config()
