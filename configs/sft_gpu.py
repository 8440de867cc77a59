"""sft on one NVIDIA H200 (141 GB): the sft_tpu.py hyper-parameters with a (1, 1, 1) mesh and more
gradient-accumulation steps (the global batch is unchanged)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from sft_tpu import get_config as tpu_config  # noqa: E402


def get_config():
    c = tpu_config()
    c.workdir = c.workdir.replace("runs/", "runs/gpu_")
    c.mesh.shape = (1, 1, 1)
    rows = c.batch.global_size + (c.batch.ul_size if c.method == "oxa" else 0)
    c.batch.micro_batches = rows // 2  # 2 sequences per micro-step
    return c
