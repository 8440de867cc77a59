"""GRPO (RLVR) from the OXA / SFT / CurioSFT export of Qwen2.5-Math-7B on a TPU v5p-8, with the OXA release's 7B RL
settings: configs/grpo_tpu.py's (64 prompts x 8 rollouts at temperature 0.85, lr 2e-6 constant, KL 0.001 (k3) to
the starting model, clip 0.2, token-mean, max prompt 1,536) with the 7B OXA runs' response cap of 16,384 tokens.

Fit (`python scripts/fit.py --config configs/grpo_7b_tpu.py --topology v5p-8`, the TPU compiler on abstract
values), GiB per chip of 95.74, counting the train state and the frozen reference that stay on the chips: train
step 64.41 (33% free; 512 rollouts of 1,536 + 16,384 tokens, 4 per micro-step), reference log-probs 33.82, prefill
70.88 (26% free) and decode 79.94 (16.5% free) at 32 sampler rows. A 7B row's KV cache of 2,048 + 16,384 slots is
1.05 GiB, so 64 rows did not fit (decode 96.01 GiB, refused); the 512 rollouts per step are sampled in 16 batches.
"""

from exploresft_jax.configs.grpo_tpu import get_config as grpo_config


def get_config():
    c = grpo_config()
    c.workdir = "runs/grpo_qwen2p5_math_7b"
    c.model.path = "runs/oxa_qwen2p5_math_7b/hf_export"
    c.grpo.max_new_tokens = 16384
    c.mesh.shape = (1, -1, 1)  # FSDP over the 4 chips
    c.mesh.targets = ("v5p-8",)
    c.grpo.sampler_rows = 32  # 4 prompts x 8 samples per batch: a 7B row's KV cache is 1.05 GiB
    c.batch.micro_batches = 128  # 4 rollouts per micro-step, one per chip
    return c
