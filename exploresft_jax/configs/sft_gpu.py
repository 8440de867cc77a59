"""sft on one NVIDIA H200 (141 GB): configs/sft_tpu.py's hyper-parameters and global batch on a (1, 1, 1) mesh,
accumulated in micro-batches of 2 sequences."""

from exploresft_jax.configs.base import one_gpu
from exploresft_jax.configs.sft_tpu import get_config as tpu_config


def get_config():
    return one_gpu(tpu_config())
