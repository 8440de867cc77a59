"""OXA (full) for Qwen2.5-Math-7B on a TPU v5p-8 at 16,384 tokens, the release's 7B settings.

The recipe is `exploresft_jax/configs/oxa_7b_tpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import oxa_7b_tpu


def get_config():
    return oxa_7b_tpu.get_config()
