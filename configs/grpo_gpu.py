"""GRPO on one NVIDIA H200: grpo_tpu.py's settings with a (1, 1, 1) mesh and smaller sampler and micro batches."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from grpo_tpu import get_config as tpu_config  # noqa: E402


def get_config():
    c = tpu_config()
    c.workdir = "runs/gpu_grpo_qwen2p5_math_1p5b"
    c.mesh.shape = (1, 1, 1)
    c.batch.micro_batches = 256  # 2 sequences per micro-step
    c.grpo.sampler_rows = 256
    return c
