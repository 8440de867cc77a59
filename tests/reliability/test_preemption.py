"""SIGTERM (spot / preemptible VMs, SLURM) mid-run: a checkpoint at the step boundary, exit 0, and the same command
resumes to exactly the uninterrupted run's weights, metrics and (GRPO) rollouts."""

from __future__ import annotations

import signal

import pytest

from exploresft_jax.train import grpo_loop, loop
from exploresft_jax.train.logger import read_metrics
from tests.reliability.common import SigtermAtStep, assert_same_weights, seed_warmup, tiny

METHODS = ("oxa", "curio")  # the two data / state paths beyond sft (UL pool; lagged teacher); sft: the campaign


def _steps_saved(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.parametrize("method", METHODS)
def test_sigterm_saves_at_the_step_boundary_and_resumes_bit_exact(tmp_path, monkeypatch, method):
    loop.run(tiny(tmp_path / "straight", method))
    with monkeypatch.context() as m:
        SigtermAtStep(m, step=3)
        loop.run(tiny(tmp_path / "cut", method))  # returns normally: the run saves step 3 and stops
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the guard put the default handler back
    assert _steps_saved(tmp_path / "cut") == [3]
    assert not (tmp_path / "cut" / "hf_export").exists()
    loop.run(tiny(tmp_path / "cut", method))  # the same command again
    assert_same_weights(tmp_path / "straight", tmp_path / "cut")
    a, b = read_metrics(tmp_path / "straight" / "metrics.jsonl"), read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))  # each step logged once
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_grpo_sigterm_resumes_with_identical_rollouts_and_weights(tmp_path, monkeypatch, grpo_warmup):
    for name in ("straight", "cut"):
        seed_warmup(tmp_path / name, grpo_warmup)
    grpo_loop.run(tiny(tmp_path / "straight", "grpo"))
    with monkeypatch.context() as m:
        SigtermAtStep(m, step=1)
        grpo_loop.run(tiny(tmp_path / "cut", "grpo"))
    assert _steps_saved(tmp_path / "cut") == [1]
    grpo_loop.run(tiny(tmp_path / "cut", "grpo"))
    assert_same_weights(tmp_path / "straight", tmp_path / "cut")
    a, b = read_metrics(tmp_path / "straight" / "metrics.jsonl"), read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("reward_mean", "response_len_mean", "rollout_entropy", "loss"):  # the same rollouts, same updates
        assert [r[key] for r in a] == [r[key] for r in b], key
