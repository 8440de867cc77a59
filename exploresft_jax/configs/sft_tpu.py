"""Plain SFT of Qwen2.5-Math-1.5B on a TPU slice (e.g. v4-8 / v5e-8): the baseline of the OXA release.

Hyper-parameters from the OXA release (1.5B): lr 2.5e-4, cosine with 3% warm-up, 6 epochs, AdamW (0.9, 0.95),
weight decay 0.1, clip 1.0, 128 sequences per step, sequences up to 32k tokens (longer ones dropped), RoPE theta
raised to 1e6 and 40k positions, ChatML without a system turn and the release's instruction appended to each
query. Set data.train_files and model.path.

Fit (`python scripts/fit.py --config configs/sft_tpu.py --topology v5e-8`, the TPU compiler on abstract values):
on a v5e-8 at 32,768 tokens the step needs 11.60 GiB per chip of 15.75 (26% free) with mesh (1, 4, 2) (2-way
tensor parallelism halves the [T, 8960] MLP activations) and 4 rows per micro-step (still 128 examples per
step, packed: see below). Pure FSDP with 8 sequences per micro-step left under 5% free (oxa_tpu's measurement).
"""

from exploresft_jax.configs.base import OXA_PROMPT_SUFFIX
from exploresft_jax.configs.base import get_config as base_config


def get_config():
    c = base_config()
    c.method = "sft"
    c.workdir = "runs/sft_qwen2p5_math_1p5b"
    c.model.init = "hf"
    c.model.path = "Qwen2.5-Math-1.5B"  # a local HuggingFace folder
    c.model.rope_theta = 1e6
    c.model.max_position_embeddings = 40000
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "full"
    c.data.train_files = ("data/sft_50k.jsonl",)
    c.data.max_length = 32768
    c.data.overlong = "drop"
    c.data.system_prompt = "none"  # the release's qwen_no_sys template: ChatML without a system turn
    c.data.prompt_suffix = OXA_PROMPT_SUFFIX  # its fixed instruction (kept once where the data already has it)
    c.batch.global_size = 128
    # The release's 128 examples per step, packed into 4-row micro-steps (one row per FSDP group on a v5e-8):
    # on its long-tailed lengths (median ~6k of 32k) about 31 rows, so 8 micro-steps instead of 32 padded ones;
    # the micro axis doubles (16, 32) on a step that needs more, and all-padding micro-steps are skipped.
    c.data.packing = "examples"
    c.batch.rows_per_micro = 4
    c.batch.micro_batches = 8
    c.optim.lr = 2.5e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_ratio = 0.03
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 1.0
    c.optim.epochs = 6
    c.loss.chunk_size = 1024
    c.mesh.shape = (1, -1, 2)  # FSDP x 2-way tensor parallelism (halves the [T, 8960] MLP activations per chip)
    c.mesh.targets = ("v5e-8",)
    c.checkpoint.every_steps = 390  # about one epoch
    return c
