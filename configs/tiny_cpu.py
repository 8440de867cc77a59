"""A tiny random Qwen2 trained on the generated arithmetic task: any method in a couple of minutes on 2 CPU cores.

The recipe is `exploresft_jax/configs/tiny_cpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import tiny_cpu


def get_config():
    return tiny_cpu.get_config()
