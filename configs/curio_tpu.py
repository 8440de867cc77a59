"""CurioSFT for Qwen2.5-Math-1.5B on a TPU slice, with the release's method constants: coef 1, K2 divergence at the
label token, lagged teacher mixed every 5 steps with alpha 0.99, tau in [1.1, 1.5], pivot 1.2, slope 2,
max increase 0.5 nats, top-512 entropy, 20 bisection steps, floor 0.03 nats; AdamW (0.9, 0.999), wd 0.01,
lr 1e-5 with 60 warm-up steps and a cosine over 4x the run, 256 sequences per step, prompts over 1,024 tokens
filtered and responses truncated at 8,192 as the release does, the checkpoint's own RoPE (not OXA's edit), 3 epochs.

The recipe is `exploresft_jax/configs/curio_tpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import curio_tpu


def get_config():
    return curio_tpu.get_config()
