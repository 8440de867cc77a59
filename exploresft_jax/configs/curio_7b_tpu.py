"""CurioSFT for Qwen2.5-Math-7B on a TPU v5p-8: the release's headline setting. The method constants, optimizer and
data are configs/curio_tpu.py's (coef 1, K2 at the label token, lagged teacher mixed every 5 steps with alpha 0.99,
tau in [1.1, 1.5], lr 1e-5 with 60 warm-up steps and a 4x cosine horizon, 256 sequences per step of up to 1,024
prompt + 8,192 response tokens, 3 epochs); the base is the release's Qwen2.5-Math-7B-16k-think (RoPE theta 40k and
16k positions, from its own config.json; this config keeps the checkpoint's RoPE).

Fit (`python scripts/fit.py --config configs/curio_7b_tpu.py --topology v5p-8`, the TPU compiler on abstract
values): the step (student forward and backward plus the lagged teacher's forward) needs 62.01 GiB per chip of
95.74 (35% free): 28.38 of arguments (float32 parameters, Adam moments and the teacher's copy, a quarter per chip)
and 33.63 of temporaries, with pure FSDP over the 4 v5p chips and one packed row per chip per micro-step.
"""

from exploresft_jax.configs.curio_tpu import get_config as curio_config


def get_config():
    c = curio_config()
    c.workdir = "runs/curio_qwen2p5_math_7b"
    c.model.path = "Qwen2.5-Math-7B-16k-think"
    c.mesh.shape = (1, -1, 1)
    c.mesh.targets = ("v5p-8",)
    # 256 examples packed into 4-row micro-steps (one row per chip): 32 to start, doubling as needed
    c.batch.rows_per_micro = 4
    c.batch.micro_batches = 32
    return c
