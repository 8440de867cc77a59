"""sft on one NVIDIA GPU (an H100 80 GB or an H200 141 GB): configs/sft_tpu.py's hyper-parameters and global batch on a
(1, 1, 1) mesh, accumulated in micro-batches of 2 sequences.

Fit (`python scripts/fit.py --config configs/sft_gpu.py`: XLA's GPU compiler for an H100 and an H200 on any host, no
GPU needed), GiB per GPU against the card's 80 GB (74.5 GiB) / 141 GB (131.3 GiB): the step needs 39.21 (H100: 47%
free; H200: 70%): 17.28 of arguments (float32 parameters and Adam moments) and 21.94 of temporaries, the attention
in the Pallas Triton flash kernel (packed rows).
"""

from exploresft_jax.configs.base import one_gpu
from exploresft_jax.configs.sft_tpu import get_config as tpu_config


def get_config():
    return one_gpu(tpu_config())
