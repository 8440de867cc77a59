"""curio_7b_tpu's recipe for Qwen2.5-Math-7B on one host of 8 NVIDIA H100 80 GB GPUs: FSDP over the 8 GPUs (mesh
(1, 8, 1)), the same global batch, one row per GPU per micro-step.

Fit (`python scripts/fit.py --config configs/curio_7b_gpu.py --topology 8xh100`, XLA's GPU compiler without a GPU):
the step (student forward and backward plus the lagged teacher's forward) needs 30.21 GiB per GPU of 74.5
(59% free): 14.19 of arguments (float32 parameters, Adam moments and the teacher's copy) and 16.01 of
temporaries.
"""

from exploresft_jax.configs.base import gpu_host
from exploresft_jax.configs.curio_7b_tpu import get_config as tpu_config


def get_config():
    return gpu_host(tpu_config(), gpus=8, rows_per_micro=8)
