"""CurioSFT for Qwen2.5-Math-7B (16k-think base) on a TPU v5p-8 at 9,216 tokens.

The recipe is `exploresft_jax/configs/curio_7b_tpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import curio_7b_tpu


def get_config():
    return curio_7b_tpu.get_config()
