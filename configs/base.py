"""Base training configuration: every knob, documented. Method files override what they need.

The recipe is `exploresft_jax/configs/base.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import base


def get_config():
    return base.get_config()
