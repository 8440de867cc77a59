"""A tiny random Qwen2 trained on the generated arithmetic task: any method in a couple of minutes on 2 CPU cores.

    python scripts/train.py --config configs/tiny_cpu.py --config.method=oxa --config.workdir=runs/oxa
"""

from exploresft_jax.configs.base import get_config as base_config


def get_config():
    c = base_config()
    c.method = "sft"
    c.workdir = "runs/tiny"
    c.model.init = "random"
    c.model.preset = "custom"
    c.model.custom.update(dict(vocab_size=0, hidden_size=96, intermediate_size=256, num_layers=2, num_heads=4,
                               num_kv_heads=2, head_dim=24, tie_word_embeddings=True))
    c.model.dtype = "float32"
    c.model.remat_policy = "none"
    c.model.scan_unroll = 8  # the whole stack of these small models: no layer loop, no [L, ...] residual buffers
    c.tokenizer.train_bpe_vocab = 384
    c.data.synthetic = "arithmetic"
    c.data.synthetic_size = 256
    c.data.synthetic_digits = 1
    c.data.max_length = 96
    c.batch.global_size = 16
    c.batch.ul_size = 16
    c.batch.micro_batches = 2
    c.optim.lr = 3e-3
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 5
    c.optim.num_steps = 60
    c.loss.chunk_size = 32
    c.loss.vocab_chunk_size = 128
    c.loss.oxa.ul_weight = 0.1  # a tiny model on a tiny task: make the UL term visible
    c.mesh.shape = (1, -1, 1)
    c.checkpoint.every_steps = 20
    c.checkpoint.keep = 2
    c.checkpoint.export_dtype = "float32"
    c.log.every_steps = 5
    # method=grpo: the random model is first fine-tuned on the task's solutions, half of which drop their carries
    # (grpo.sft_warmup_*), so it makes systematic mistakes; GRPO then trains it on the task's prompts with the
    # math verifier as the reward.
    c.grpo.sft_warmup_steps = 400
    c.grpo.sft_warmup_bug_rate = 0.5
    c.grpo.lr = 3e-4
    c.grpo.prompts_per_step = 8
    c.grpo.group_size = 8
    c.grpo.temperature = 0.7
    c.grpo.max_new_tokens = 40
    c.grpo.max_prompt_length = 32
    c.grpo.kl_coef = 0.0
    c.grpo.sampler_rows = 64
    c.grpo.sample_log_every = 10
    c.grpo.reward_timeout = 2.0
    return c
