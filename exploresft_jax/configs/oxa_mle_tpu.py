"""OXA-MLE, the CE-only ablation of OXA, for Qwen2.5-Math-1.5B on a TPU slice: cross-entropy on the
Gaussian-PPL-selected teacher data alone (the release's `ul_global = 0`, `ul_weight = 0`), with OXA's
per-sample normalisation (each example's token mean, averaged over the step's examples) and otherwise
configs/oxa_tpu.py's settings: 128 CE sequences per step (the SFT baseline's count), lr 2.5e-4, cosine 3%
warm-up, 6 epochs. data.train_files is the CE-only set written by scripts/select_oxa.py without --self
(loss_type ce); UL records in a mixed file are ignored.

Memory per micro-step is oxa_tpu's (4 rows per micro-step on the same mesh); the 128 examples are packed as in
oxa_tpu, about 31 rows on the release's lengths, so 8 micro-steps to start (doubling when a step needs more).
"""

from exploresft_jax.configs.oxa_tpu import get_config as oxa_config


def get_config():
    c = oxa_config()
    c.workdir = "runs/oxa_mle_qwen2p5_math_1p5b"
    c.data.train_files = ("data/oxa_mle.jsonl",)
    c.batch.global_size = 128
    c.batch.ul_size = 0  # no UL data: the loss is OXA's CE term alone
    c.batch.micro_batches = 8  # the first bucket of 4-row micro-steps, as in sft_tpu
    c.loss.oxa.ul_weight = 0.0
    return c
