"""GRPO (RLVR) from an SFT / OXA / CurioSFT checkpoint of Qwen2.5-Math-1.5B on a TPU slice, with the OXA release's
RL settings: 64 prompts x 8 rollouts per step, temperature 0.85, top-p 1, one on-policy update per step, lr 2e-6
constant, wd 0.01, clip 1.0, KL 0.001 (k3) to the frozen starting model, clip 0.2, token-mean, max response 16k
(18k for the OXA models), the answer read after </think> from the final \boxed{} only, verl's dual clip
(c = 3) for negative advantages, prompts in ChatML without a system turn with the release's instruction appended.

The CurioSFT release's alternative (documented, set by overrides): 128 prompts x 8 at temperature 1.0, 4 mini-batches,
lr 1e-6, no KL, Dr. GRPO aggregation over a constant 8192:
    --config.grpo.prompts_per_step=128 --config.grpo.temperature=1.0 --config.grpo.mini_batches=4
    --config.optim.lr=1e-6 --config.grpo.kl_coef=0 --config.grpo.aggregation=seq-mean-token-sum-norm
    --config.grpo.max_new_tokens=8192 --config.optim.b2=0.999

Fit (`python scripts/fit.py --config configs/grpo_tpu.py --topology v5e-8 --max-rows`, the TPU compiler on
abstract values), GiB per chip of 15.75 on a v5e-8, counting what the loop keeps on the chips meanwhile: train step
12.68 (19% free; 512 rollouts of 1,536 + 16,384 tokens, 8 per micro-step), reference log-probs 4.31 (the train state
resident), and the continuous sampler at 128 decode rows: pool prefill 9.65 (39% free, the slot caches resident),
insert 8.11 (prompt caches copied one layer at a time), decode chunk 9.33 (41% free); 256 rows do not fit. During
rollouts the train state and the KL reference wait in host memory (grpo.offload_state) and the sampler decodes from
its own bfloat16 copy of the weights, split over the tensor axis; a row's KV cache (28 layers x 2 KV heads x 128 x
17,920 entries, bfloat16: 0.48 GiB) is split over the 4 batch devices and the 2 KV heads, its physical share per
chip. So a step's 512 rollouts take 4 batches' worth of slots (the engine refills slots as samples end). Changed
for this: mesh (1, 4, 2) (2-way tensor parallelism). A slice with more HBM (v5p-8: 95.74 GiB per chip) takes far
larger sampler batches.

Paged alternative (compiled the same way; not the default until timed on a TPU): `--config.grpo.sampler_rows=512
--config.grpo.kv_pages=55771` puts all 512 rollouts in decode slots at once, the KV cache in a pool of 55,771 pages
of 16 entries per batch device (`scripts/fit.py ... --max-pages`: the most that keep 10% free; 49 rows of the full
17,920 entries per device, 196 over the slice, and many more of a real long-tailed mix): pool prefill 14.17 GiB
(10.0% free), insert 12.98, decode 13.97 (decode attention in the Pallas TPU paged-attention kernel, each row
reading only its own pages).
"""

from exploresft_jax.configs.base import OXA_PROMPT_SUFFIX
from exploresft_jax.configs.base import get_config as base_config


def get_config():
    c = base_config()
    c.method = "grpo"
    c.workdir = "runs/grpo_qwen2p5_math_1p5b"
    c.model.init = "hf"
    c.model.path = "runs/oxa_qwen2p5_math_1p5b/hf_export"  # the SFT / OXA / CurioSFT export
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "full"
    c.grpo.prompt_files = ("data/deepscaler_10k.jsonl",)
    c.grpo.system_prompt = "none"  # ChatML without a system turn, as the OXA release's RL prompts
    c.grpo.prompt_suffix = OXA_PROMPT_SUFFIX  # the release's fixed instruction on every prompt
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
    c.grpo.sampler_rows = 128  # decode slots; the KV cache is ~0.5 GiB per row (1/8 of it per chip)
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
    c.mesh.shape = (1, -1, 2)  # 2-way tensor parallelism: halves the sampler's weight copy and the MLP activations
    c.mesh.targets = ("v5e-8",)
    c.checkpoint.every_steps = 20
    return c
