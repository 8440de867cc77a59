"""OXA with LoRA for Qwen2.5-Math-1.5B on one Colab TPU chip (v5e-1, 15.75 GiB of HBM): the release's data and
loss settings (configs/oxa_tpu.py: 128 CE + 128 UL examples per step, ul_weight 1e-4, eps 1e-6, cosine 3% warm-up,
6 epochs) with rank-32 adapters on every projection over a frozen bfloat16 base, on a one-chip mesh.

What changes from the full-parameter recipe: only the adapters train (37 M parameters: 2.4% of 1.54 B), so the
optimizer holds no copy of the base; one packed row per micro-step; and the learning rate is 4x the release's
2.5e-4, a common starting point for LoRA (adapters need a larger step than full fine-tuning; not tuned here).

Fit (`python scripts/fit.py --config configs/oxa_colab.py --topology v5e-1`, the TPU compiler on abstract values):
at the release's full 32,768 tokens the step needs 13.13 GiB of 15.75 (16.7% free; 16,384 tokens: 8.71 GiB): the bf16
base 2.9 GiB, adapters with their float32 Adam moments 0.4 GiB, the rest one packed row's activations. Full fine-
tuning of the same step is refused on a v5e-1 at any length (its float32 parameters and Adam moments alone are 17.25
GiB). README's LoRA section has the memory table per runtime.
"""

from exploresft_jax.configs.oxa_tpu import get_config as oxa_config


def get_config():
    c = oxa_config()
    c.workdir = "runs/oxa_colab_qwen2p5_math_1p5b"
    c.model.lora.rank = 32
    c.model.lora.alpha = 64.0
    c.model.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")
    c.model.lora.base_dtype = "bfloat16"
    # data.max_length stays the release's 32768 (sft_tpu): the longest length with >= 10% of the chip free
    c.mesh.shape = (1, -1, 1)  # one chip: (1, 1, 1); on more, pure FSDP
    c.mesh.targets = ("v5e-1", "v6e-1")
    c.data.packing = "examples"
    c.batch.rows_per_micro = 1
    c.batch.micro_batches = 64
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0  # decay would pull the adapters, not the model, toward zero
    c.checkpoint.every_steps = 100
    return c
