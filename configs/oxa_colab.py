"""OXA with LoRA (rank 32, frozen bfloat16 base) for Qwen2.5-Math-1.5B on one Colab TPU chip (v5e-1).

The recipe is `exploresft_jax/configs/oxa_colab.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import oxa_colab


def get_config():
    return oxa_colab.get_config()
