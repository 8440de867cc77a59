"""Plain SFT of Qwen2.5-Math-1.5B on a TPU slice (e.g. v4-8 / v5e-8): the baseline of the OXA release.

The recipe is `exploresft_jax/configs/sft_tpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import sft_tpu


def get_config():
    return sft_tpu.get_config()
