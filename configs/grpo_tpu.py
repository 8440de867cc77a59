"""GRPO (RLVR) from an SFT / OXA / CurioSFT checkpoint of Qwen2.5-Math-1.5B on a TPU slice, with the OXA release's
RL settings: 64 prompts x 8 rollouts per step, temperature 0.85, top-p 1, one on-policy update per step, lr 2e-6
constant, wd 0.01, clip 1.0, KL 0.001 (k3) to the frozen starting model, clip 0.2, token-mean, max response 16k
(18k for the OXA models), the answer read after </think>.

The CurioSFT release's alternative (documented, set by overrides): 128 prompts x 8 at temperature 1.0, 4 mini-batches,
lr 1e-6, no KL, Dr. GRPO aggregation over a constant 8192:
    --config.grpo.prompts_per_step=128 --config.grpo.temperature=1.0 --config.grpo.mini_batches=4
    --config.optim.lr=1e-6 --config.grpo.kl_coef=0 --config.grpo.aggregation=seq-mean-token-sum-norm
    --config.grpo.max_new_tokens=8192 --config.optim.b2=0.999
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from base import get_config as base_config  # noqa: E402


def get_config():
    c = base_config()
    c.method = "grpo"
    c.workdir = "runs/grpo_qwen2p5_math_1p5b"
    c.model.init = "hf"
    c.model.path = "runs/oxa_qwen2p5_math_1p5b/hf_export"  # the SFT / OXA / CurioSFT export
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "full"
    c.grpo.prompt_files = ("data/deepscaler_10k.jsonl",)
    c.grpo.prompt_suffix = ""  # the OXA release appends its fixed instruction to every prompt
    c.grpo.prompts_per_step = 64
    c.grpo.group_size = 8
    c.grpo.temperature = 0.85
    c.grpo.top_p = 1.0
    c.grpo.max_prompt_length = 1536
    c.grpo.max_new_tokens = 16384
    c.grpo.mini_batches = 1
    c.grpo.ppo_epochs = 1
    c.grpo.clip_low = 0.2
    c.grpo.clip_high = 0.2
    c.grpo.kl_coef = 0.001
    c.grpo.kl_estimator = "k3"
    c.grpo.aggregation = "token-mean"
    c.grpo.advantage_scale = "group"
    c.grpo.require_think_close = True
    c.grpo.sampler_rows = 512
    c.batch.micro_batches = 64  # 8 sequences per micro-step
    c.optim.lr = 2e-6
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.warmup_ratio = 0.0
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.optim.num_steps = 3000
    c.loss.chunk_size = 2048
    c.mesh.shape = (1, -1, 1)
    c.checkpoint.every_steps = 20
    return c
