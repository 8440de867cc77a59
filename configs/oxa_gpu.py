"""oxa on one NVIDIA H200 (141 GB): configs/oxa_tpu.py's hyper-parameters and global batch on a (1, 1, 1) mesh,
accumulated in micro-batches of 2 sequences.

The recipe is `exploresft_jax/configs/oxa_gpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import oxa_gpu


def get_config():
    return oxa_gpu.get_config()
