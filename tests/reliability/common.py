"""Shared set-up of the reliability tests: tiny runs of every method and a comparison of their end states."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np

from exploresft_jax.models.hf import SafetensorsFolder
from exploresft_jax.train import grpo_loop, runtime
from tests.train.test_train_loop import tiny_config


def tiny(workdir: Path, method: str, **over):
    """The training tests' tiny config at reliability size: 8 steps (GRPO: 4 iterations), a checkpoint every 4
    (GRPO: 2), a float32 export to compare, every step logged, a short GRPO warm-up."""
    sizes = {"optim.num_steps": 4 if method == "grpo" else 8, "checkpoint.every_steps": 2 if method == "grpo" else 4,
             "checkpoint.keep": 3, "checkpoint.export_hf": True, "checkpoint.export_dtype": "float32",
             "log.every_steps": 1, "log.tensorboard": False, "grpo.sft_warmup_steps": 60,
             "grpo.prompts_per_step": 4, "grpo.group_size": 4, "grpo.max_new_tokens": 24, "grpo.sampler_rows": 16}
    return tiny_config(Path(workdir), method, **{**sizes, **over})


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
