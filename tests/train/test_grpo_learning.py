"""GRPO learns: the tiny_cpu config (SFT warm-up on carry-dropping solutions, then GRPO with verifier rewards)
raises the held-out reward by a clear margin, resuming mid-run from its checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from exploresft_jax.data.synthetic import arithmetic_records
from exploresft_jax.models import hf
from exploresft_jax.models.tokenizer import load_tokenizer, stop_token_ids
from exploresft_jax.rewards import check_batch
from exploresft_jax.sampling import Sampler, SamplingConfig, encode_prompts
from exploresft_jax.train import grpo_loop
from exploresft_jax.train.logger import read_metrics

ROOT = Path(__file__).resolve().parents[2]
MARGIN = 0.08  # held-out reward must rise by at least this much (absolute, out of 1)


def _config(workdir):
    spec = importlib.util.spec_from_file_location("tiny_cpu", ROOT / "configs" / "tiny_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.method = "grpo"
    c.workdir = str(workdir)
    c.optim.num_steps = 40
    c.log.plots = False
    c.log.tensorboard = False
    c.checkpoint.async_save = False
    return c


def _held_out_reward(model_dir: Path, tokenizer, prompts) -> float:
    model = hf.load_hf_model(model_dir, dtype="float32")
    ids = encode_prompts(tokenizer, [r["prompt"] for r in prompts])
    out = Sampler(model, cache_dtype="float32").generate(ids, max_new_tokens=40, n=8,
                                                         config=SamplingConfig(temperature=0.7),
                                                         stop_ids=stop_token_ids(tokenizer), key=0)
    texts = [tokenizer.decode(out.tokens[r, :out.lengths[r]], skip_special_tokens=True)
             for r in range(len(out.lengths))]
    golds = [r["answer"] for r in prompts for _ in range(8)]
    return float(np.mean([v.reward for v in check_batch(golds, texts)]))


def test_grpo_raises_held_out_reward(tmp_path):
    cfg = _config(tmp_path)
    cfg.optim.max_steps_per_run = 25
    grpo_loop.run(cfg)  # stops after 25 iterations with a checkpoint
    assert not (tmp_path / "hf_export").exists()
    grpo_loop.run(_config(tmp_path))  # the same command again: resumes at iteration 25
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert all({"step", "loss", "reward_mean"} <= set(r) for r in rows)
    assert max(r["logprob_gap"] for r in rows) < 1e-4  # trainer and sampler agree on every rollout
    tok = load_tokenizer(tmp_path / "sft_warmup" / "tokenizer")
    held_out = arithmetic_records(64, seed=12345, digits=1)
    before = _held_out_reward(tmp_path / "sft_warmup" / "hf_export", tok, held_out)
    after = _held_out_reward(tmp_path / "hf_export", tok, held_out)
    assert after - before >= MARGIN, (before, after)
