"""Compiling for a v5e-8 in a child process (the TPU compiler, no TPU), as `scripts/fit.py` runs: a clean
environment without the suite's fake host devices, JAX on the CPU beside the TPU compiler.

`PREAMBLE` builds a small bfloat16 model whose head_dim (128) suits the TPU kernels and places its abstract
parameters on a (1, 4, 2) mesh of the slice's compile-only devices under the tensor-parallel sampling rules
(names: cfg, target, mesh, rules, gd, params); `run_on_v5e8(body)` runs the preamble and `body`, and returns the
JSON value of the last line the script printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PREAMBLE = """
import json
import jax
import jax.numpy as jnp
from flax import nnx
from exploresft_jax import sharding as shd
from exploresft_jax.models import qwen2
from exploresft_jax.train import fit

cfg = qwen2.Qwen2Config(vocab_size=256, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=128, dtype="bfloat16", param_dtype="bfloat16")
target = fit.resolve_target("v5e-8")
mesh = shd.make_mesh((1, 4, 2), devices=target.devices)
rules = shd.sample_rules(tensor_parallel=True)
gd, params = nnx.split(qwen2.abstract_model(cfg))
params = fit._place(params, shd.state_shardings(params, mesh, rules))
"""


def run_on_v5e8(body: str):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", PREAMBLE + body], cwd=Path(__file__).resolve().parents[2], env=env,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads([ln for ln in out.stdout.splitlines() if ln[:1] in "[{"][-1])
