"""oxa on one NVIDIA H200 (141 GB): configs/oxa_tpu.py's hyper-parameters and global batch on a (1, 1, 1) mesh,
accumulated in micro-batches of 2 sequences."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from base import one_gpu  # noqa: E402
from oxa_tpu import get_config as tpu_config  # noqa: E402


def get_config():
    return one_gpu(tpu_config())
