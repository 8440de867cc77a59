"""GRPO (RLVR) from the OXA / SFT / CurioSFT export of Qwen2.5-Math-7B on a TPU v5p-8, with the OXA release's 7B RL
settings: configs/grpo_tpu.py's (64 prompts x 8 rollouts at temperature 0.85, lr 2e-6 constant, KL 0.001 (k3) to
the starting model, clip 0.2, token-mean, max prompt 1,536) with the 7B OXA runs' response cap of 16,384 tokens.

Fit (`python scripts/fit.py --config configs/grpo_7b_tpu.py --topology v5p-8 --max-rows`, the TPU compiler on
abstract values), GiB per chip of 95.74: train step 57.31 (40% free; 512 rollouts of 1,536 + 16,384 tokens, 4 per
micro-step), reference log-probs 27.11 (the train state resident), and the continuous sampler at 128 decode rows
while the train state and the reference wait in host memory: pool prefill 47.36 (51% free), insert 37.27, decode
chunk 76.27 (20% free; a 7B row's KV cache of 17,920 entries is 0.98 GiB, 32 rows per chip, plus the sampler's
bfloat16 weight copy, replicated); 256 rows do not fit (decode 137.95 GiB, refused).
"""

from exploresft_jax.configs.grpo_tpu import get_config as grpo_config


def get_config():
    c = grpo_config()
    c.workdir = "runs/grpo_qwen2p5_math_7b"
    c.model.path = "runs/oxa_qwen2p5_math_7b/hf_export"
    c.grpo.max_new_tokens = 16384
    c.mesh.shape = (1, -1, 1)  # FSDP over the 4 chips
    c.mesh.targets = ("v5p-8",)
    c.grpo.sampler_rows = 128  # decode slots: a 7B row's KV cache is 0.98 GiB (256 rows do not fit)
    c.batch.micro_batches = 128  # 4 rollouts per micro-step, one per chip
    return c
