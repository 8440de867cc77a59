"""GRPO (RLVR) from an SFT / OXA / CurioSFT checkpoint of Qwen2.5-Math-1.5B on a TPU slice, with the OXA release's
RL settings: 64 prompts x 8 rollouts per step, temperature 0.85, top-p 1, one on-policy update per step, lr 2e-6
constant, wd 0.01, clip 1.0, KL 0.001 (k3) to the frozen starting model, clip 0.2, token-mean, max response 16k
(18k for the OXA models), the answer read after </think> from the final oxed{} only, verl's dual clip
(c = 3) for negative advantages, prompts in ChatML without a system turn with the release's instruction appended.

The recipe is `exploresft_jax/configs/grpo_tpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import grpo_tpu


def get_config():
    return grpo_tpu.get_config()
