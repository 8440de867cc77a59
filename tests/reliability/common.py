"""Shared set-up of the reliability tests: tiny runs of every method and a comparison of their end states."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np

from exploresft_jax.configs import tiny_cpu
from exploresft_jax.models.hf import SafetensorsFolder
from exploresft_jax.train import grpo_loop, runtime


def tiny(workdir: Path, method: str, **over):
    """tiny_cpu at test size: 8 steps (GRPO: 4 iterations), a checkpoint every 4, float32 export, no plots."""
    c = tiny_cpu.get_config()
    c.method = method
    c.workdir = str(workdir)
    c.model.custom.update(dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                               head_dim=8))
    c.tokenizer.train_bpe_vocab = 300
    c.data.synthetic_size = 64
    c.data.max_length = 64
    c.batch.global_size = 8
    c.batch.ul_size = 8
    c.batch.micro_batches = 2
    c.optim.num_steps = 4 if method == "grpo" else 8
    c.optim.lr = 1e-2
    c.checkpoint.every_steps = 2 if method == "grpo" else 4
    c.checkpoint.keep = 3
    c.checkpoint.async_save = False
    c.checkpoint.export_hf = True
    c.checkpoint.export_dtype = "float32"
    c.log.every_steps = 1
    c.log.plots = False
    c.log.tensorboard = False
    c.grpo.sft_warmup_steps = 60
    c.grpo.prompts_per_step = 4
    c.grpo.group_size = 4
    c.grpo.max_new_tokens = 24
    c.grpo.sampler_rows = 16
    for k, v in over.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def seed_warmup(workdir: Path, warmup: Path) -> None:
    """Gives a GRPO workdir the SFT warm-up another run already trained (the loop reuses a finished one)."""
    shutil.copytree(warmup, Path(workdir) / "sft_warmup")


def make_warmup(root: Path) -> Path:
    """Trains the tiny GRPO config's SFT warm-up once; returns its folder (hf_export + tokenizer inside)."""
    c = tiny(root / "grpo", "grpo")
    grpo_loop.sft_warmup(c)
    return root / "grpo" / "sft_warmup"


def weights(workdir: Path) -> dict[str, np.ndarray]:
    folder = SafetensorsFolder(Path(workdir) / "hf_export")
    return {k: np.asarray(folder[k]) for k in folder.keys()}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


class SigtermAtStep:
    """Delivers a real SIGTERM to this process while optimizer step `step` is being finished (inside the loop's
    preemption guard, before its step-boundary check), as a spot VM's notice arriving mid-step would."""

    def __init__(self, monkeypatch, step: int):
        original = runtime.Runtime.end_step

        def end_step(rt, done, *args, **kw):
            if done == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(rt, done, *args, **kw)

        monkeypatch.setattr(runtime.Runtime, "end_step", end_step)
