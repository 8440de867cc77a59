"""OXA (full: Gaussian-selected CE data + unlikelihood on confident wrong self-generated data) for
Qwen2.5-Math-1.5B on a TPU slice, with the release's settings: 128 CE + 128 UL sequences per step, ul_weight 1e-4,
eps 1e-6, lr 2.5e-4, cosine 3% warm-up, 6 epochs. data.train_files is the mixed set written by
scripts/select_oxa.py (loss_type ce / ul).

Fit (`python scripts/fit.py --config configs/oxa_tpu.py --topology v5e-8`, the TPU compiler on abstract values):
on a v5e-8 at the release's 32,768 tokens the step needs 12.02 GiB per chip of 15.75 (24% free), with sft_tpu's
mesh (1, 4, 2) (2-way tensor parallelism) and 4 rows per micro-step (the 128 + 128 examples and lr per step are
unchanged; packed as in sft_tpu). Pure FSDP (1, 8, 1) with 8 sequences per micro-step needed 15.0 GiB
(4.7% free), most of it the [T, 8960] MLP activations recomputed per layer.
"""

from exploresft_jax.configs.sft_tpu import get_config as sft_config


def get_config():
    c = sft_config()
    c.method = "oxa"
    c.workdir = "runs/oxa_qwen2p5_math_1p5b"
    c.data.train_files = ("data/oxa_full.jsonl",)
    c.batch.global_size = 128
    c.batch.ul_size = 128
    # 128 CE + 128 UL examples per step, each pool packed into 4-row micro-steps (CE and UL never share a row):
    # about 62 rows on the release's lengths, so 16 micro-steps (doubling to 32 / 64 when a step needs more)
    # instead of 64 padded ones; per-example CE / UL means are exact under packing.
    c.batch.micro_batches = 16
    c.loss.oxa.ul_weight = 1e-4
    c.loss.oxa.eps = 1e-6
    return c
