"""grpo on one NVIDIA GPU (an H100 80 GB or an H200 141 GB): configs/grpo_tpu.py's hyper-parameters and global batch
on a (1, 1, 1) mesh, accumulated in micro-batches of 2 sequences, sampling 64 rows (8 prompts x 8) at a time.

Fit (`python scripts/fit.py --config configs/grpo_gpu.py`: XLA's GPU compiler for an H100 and an H200 on any host,
no GPU needed), GiB per GPU against the card's 80 GB (74.5 GiB) / 141 GB (131.3 GiB), counting the train state
(17.25) and the frozen reference (5.75) that stay on the GPU: train step 39.58 (H100: 47% free), reference
log-probs 24.64, sampler prefill 64.38 (H100: 13.6% free; H200: 51%) and decode 61.45 (17.5% free; the 64 rows'
KV cache of 2,048 + 16,384 slots, 0.49 GiB each, and the sampler's bfloat16 weight copy). The rollout rows (one
right-padded rollout per row) use cuDNN's fused attention, the left-padded prompts' prefill the Pallas Triton
kernel.
"""

from exploresft_jax.configs.base import one_gpu
from exploresft_jax.configs.grpo_tpu import get_config as tpu_config


def get_config():
    c = one_gpu(tpu_config())
    c.grpo.sampler_rows = 64  # 8 prompts x 8 samples per batch (the TPU config's 16 rows fit 15.75 GiB chips)
    return c
