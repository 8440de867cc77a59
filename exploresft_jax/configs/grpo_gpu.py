"""grpo on one NVIDIA H200 (141 GB): configs/grpo_tpu.py's hyper-parameters and global batch on a (1, 1, 1) mesh,
accumulated in micro-batches of 2 sequences."""

from exploresft_jax.configs.base import one_gpu
from exploresft_jax.configs.grpo_tpu import get_config as tpu_config


def get_config():
    c = one_gpu(tpu_config())
    # The TPU config samples 16 rows at a time to fit 15.75 GiB chips. One H200 (131 GiB) holds the train state,
    # the reference and the sampler's weights (~37 GiB) plus 64 rows of 2,048 + 16,384-slot KV cache (0.49 GiB
    # each): an estimate from the v5e-8 compiles, not compiled for the GPU here.
    c.grpo.sampler_rows = 64
    return c
