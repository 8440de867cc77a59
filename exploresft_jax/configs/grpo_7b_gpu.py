"""grpo_7b_tpu's recipe for Qwen2.5-Math-7B on one host of 8 NVIDIA H100 80 GB GPUs: FSDP over the 8 GPUs (mesh
(1, 8, 1)), the same global batch, one row per GPU per micro-step.

Fit (`python scripts/fit.py --config configs/grpo_7b_gpu.py --topology 8xh100`, XLA's GPU compiler without a GPU):
GiB per GPU of 74.5, counting the train state (10.64) and the frozen reference (3.55) that stay on the
GPUs: train step 29.68 (60% free; cuDNN fused attention on the rollout rows), reference log-probs 17.31, prefill
54.38 (27% free) and decode 47.52 (36% free) at 32 sampler rows.
"""

from exploresft_jax.configs.base import gpu_host
from exploresft_jax.configs.grpo_7b_tpu import get_config as tpu_config


def get_config():
    return gpu_host(tpu_config(), gpus=8, rows_per_micro=8)
