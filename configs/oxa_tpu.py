"""OXA (full: Gaussian-selected CE data + unlikelihood on confident wrong self-generated data) for
Qwen2.5-Math-1.5B on a TPU slice, with the release's settings: 128 CE + 128 UL sequences per step, ul_weight 1e-4,
eps 1e-6, lr 2.5e-4, cosine 3% warm-up, 6 epochs. data.train_files is the mixed set written by
scripts/select_oxa.py (loss_type ce / ul).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from sft_tpu import get_config as sft_config  # noqa: E402


def get_config():
    c = sft_config()
    c.method = "oxa"
    c.workdir = "runs/oxa_qwen2p5_math_1p5b"
    c.data.train_files = ("data/oxa_full.jsonl",)
    c.batch.global_size = 128
    c.batch.ul_size = 128
    c.batch.micro_batches = 32  # 4 CE + 4 UL sequences per micro-step
    c.loss.oxa.ul_weight = 1e-4
    c.loss.oxa.eps = 1e-6
    return c
