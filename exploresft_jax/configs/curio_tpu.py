"""CurioSFT for Qwen2.5-Math-1.5B on a TPU slice, with the release's method constants: coef 1, K2 divergence at the
label token, lagged teacher mixed every 5 steps with alpha 0.99, tau in [1.1, 1.5], pivot 1.2, slope 2,
max increase 0.5 nats, top-512 entropy, 20 bisection steps, floor 0.03 nats; AdamW (0.9, 0.999), wd 0.01,
lr 1e-5 with 60 warm-up steps and a cosine over 4x the run, 256 sequences per step, prompts over 1,024 tokens
filtered and responses truncated at 8,192 as the release does, the checkpoint's own RoPE (not OXA's edit), 3 epochs.

Fit (`python scripts/fit.py --config configs/curio_tpu.py --topology v5e-8`, the TPU compiler on abstract values):
on a v5e-8 at 9,216 tokens the step (student forward and backward plus the lagged teacher's forward, teacher
parameters resident) needs 9.47 GiB per chip of 15.75 (40% free) with FSDP over all 8 chips and one sequence per
chip per micro-step, so this config keeps mesh (1, 8, 1) where sft_tpu moved to 2-way tensor parallelism.
"""

from exploresft_jax.configs.sft_tpu import get_config as sft_config


def get_config():
    c = sft_config()
    c.method = "curio"
    c.workdir = "runs/curio_qwen2p5_math_1p5b"
    c.data.train_files = ("data/openr1_math_46k.parquet",)
    c.data.format = "messages"
    c.data.max_length = 9216  # 1024 prompt + 8192 response
    c.data.max_prompt_length = 1024  # the release filters longer prompts ...
    c.data.max_response_length = 8192  # ... and truncates longer demonstrations (so nothing is dropped for length)
    c.data.overlong = "drop"
    c.data.system_prompt = "default"  # the release renders with its checkpoint's own template, no added instruction
    c.data.prompt_suffix = ""
    # The release's RoPE comes with its checkpoint; sft_tpu's OXA edit (theta 1e6, 40k positions) is not CurioSFT's.
    c.model.rope_theta = 0.0
    c.model.max_position_embeddings = 0
    c.batch.global_size = 256
    # 256 examples per step packed into 8-row micro-steps (one row per chip); 16 to start, doubling as needed
    c.batch.rows_per_micro = 8
    c.batch.micro_batches = 16
    c.mesh.shape = (1, -1, 1)  # FSDP over all chips: 9,216-token rows fit without tensor parallelism
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 60
    c.optim.schedule = "cosine"
    c.optim.min_lr_ratio = 1e-4
    c.optim.cosine_horizon_factor = 4.0
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.weight_decay = 0.01
    c.optim.epochs = 3
    c.loss.curio.update(dict(coef=1.0, divergence="k2", teacher="lagged", sync_every=5, alpha=0.99, tau_min=1.1,
                             tau_max=1.5, pivot=1.2, slope=2.0, max_increase=0.5, top_k=512, iters=20, floor=0.03))
    c.checkpoint.every_steps = 178
    return c
