"""oxa_7b_tpu's recipe for Qwen2.5-Math-7B on one host of 8 NVIDIA H100 80 GB GPUs: FSDP over the 8 GPUs (mesh
(1, 8, 1)), the same global batch, one row per GPU per micro-step.

Fit (`python scripts/fit.py --config configs/oxa_7b_gpu.py --topology 8xh100`, XLA's GPU compiler without a GPU):
the step needs 29.84 GiB per GPU of 74.5 (60% free): 10.65 of arguments (float32 parameters and Adam
moments, an eighth per GPU) and 19.19 of temporaries, the attention in the Pallas Triton flash kernel (packed rows).
"""

from exploresft_jax.configs.base import gpu_host
from exploresft_jax.configs.oxa_7b_tpu import get_config as tpu_config


def get_config():
    return gpu_host(tpu_config(), gpus=8, rows_per_micro=8)
