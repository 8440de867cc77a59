"""grpo_7b_tpu's recipe for Qwen2.5-Math-7B on one host of 8 NVIDIA H100 80 GB GPUs: FSDP over the 8 GPUs (mesh
(1, 8, 1)), the same global batch, one row per GPU per micro-step.

Fit (`python scripts/fit.py --config configs/grpo_7b_gpu.py --topology 8xh100 --max-rows`, XLA's GPU compiler
without a GPU): GiB per GPU of 74.5: train step 26.14 (65% free; cuDNN fused attention on the rollout rows),
reference log-probs 14.88 (the train state, 10.64, resident), and the continuous sampler at 256 decode rows (32 per
GPU) while the train state and the reference wait in host memory: pool prefill 45.77 (39% free, the slot caches
resident; at most 16 prompts of 2,048 tokens per prefill call), insert 32.57, decode chunk 46.09 (38% free); 512
rows do not fit (decode 77.68).
"""

from exploresft_jax.configs.base import gpu_host
from exploresft_jax.configs.grpo_7b_tpu import get_config as tpu_config


def get_config():
    c = gpu_host(tpu_config(), gpus=8, rows_per_micro=8)
    c.grpo.sampler_rows = 256  # decode slots, 32 per GPU (512 do not fit)
    return c
