"""curio on one NVIDIA GPU (an H100 80 GB or an H200 141 GB): configs/curio_tpu.py's hyper-parameters and global batch
on a (1, 1, 1) mesh, accumulated in micro-batches of 2 sequences.

Fit (`python scripts/fit.py --config configs/curio_gpu.py`: XLA's GPU compiler for an H100 and an H200 on any host,
no GPU needed), GiB per GPU against the card's 80 GB (74.5 GiB) / 141 GB (131.3 GiB): the step (student forward and
backward plus the lagged teacher's forward) needs 39.75 (H100: 47% free; H200: 70%): 23.02 of arguments (float32
parameters, Adam moments and the teacher's copy) and 16.74 of temporaries, the attention in the Pallas Triton flash
kernel (packed rows).
"""

from exploresft_jax.configs.base import one_gpu
from exploresft_jax.configs.curio_tpu import get_config as tpu_config


def get_config():
    return one_gpu(tpu_config())
