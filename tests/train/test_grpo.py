"""GRPO: the on-policy step is REINFORCE with a group baseline; the trainer scores rollouts exactly as the sampler
sampled them; batches from rollouts put the loss on completion tokens only."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exploresft_jax.models.qwen2 import Qwen2Config, init_model
from exploresft_jax.sampling import Sampler, SamplingConfig
from exploresft_jax.train.grpo_loop import build_batch, group_stats, prompt_indices
from exploresft_jax.train.objectives import GRPOOptions
from exploresft_jax.train.step import StepConfig, batch_denominators, micro_loss

CFG = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, dtype="float32")
G, P, NEW, TEMP = 4, 3, 6, 0.8


@pytest.fixture(scope="module")
def rollout():
    model = init_model(CFG, seed=0)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 40, n).tolist() for n in (5, 3, 7)]
    sampler = Sampler(model, cache_dtype="float32", max_rows=16)
    out = sampler.generate(prompts, max_new_tokens=NEW, n=G, config=SamplingConfig(temperature=TEMP), stop_ids=[1],
                           key=3)
    rewards = rng.integers(0, 2, P * G).astype(np.float32)
    rewards[:G] = 1.0  # one zero-variance group
    mean = rewards.reshape(P, G).mean(1, keepdims=True)
    std = rewards.reshape(P, G).std(1, ddof=1, keepdims=True)
    adv = np.where(std > 0, (rewards.reshape(P, G) - mean) / (std + 1e-6), 0.0).reshape(-1)
    row_prompts = [prompts[i] for i in np.repeat(np.arange(P), G)]
    batch = build_batch(row_prompts, out, adv.astype(np.float32), np.ones(P * G, bool), row_len=7 + NEW, pad_id=0)
    return model, out, row_prompts, batch, adv


def test_batch_puts_loss_on_completion_tokens_only(rollout):
    _, out, row_prompts, batch, _ = rollout
    for i, p in enumerate(row_prompts):
        n = int(out.lengths[i])
        assert batch["loss_mask"][i].sum() == n
        np.testing.assert_array_equal(batch["labels"][i, len(p) - 1:len(p) - 1 + n], out.tokens[i, :n])
        np.testing.assert_array_equal(batch["tokens"][i, :len(p)], p)


def _step_parts(model, batch, packed=True):
    graphdef, params = nnx.split(model)
    sc = StepConfig(method="grpo", chunk_size=4, vocab_chunk_size=16,
                    options=GRPOOptions(rollout_temperature=TEMP, max_len=NEW), packed=packed)
    mb = {k: jnp.asarray(v) for k, v in batch.items()}
    den = batch_denominators({k: v[None] for k, v in mb.items()})
    fn = functools.partial(micro_loss, graphdef=graphdef, sc=sc)
    return graphdef, params, mb, den, fn


@pytest.mark.parametrize("packed", [True, False], ids=["segment_ids", "padding_mask"])
def test_trainer_logprobs_equal_the_sampler(rollout, packed):
    """Also with packed=False, as GRPO runs its step (one right-padded rollout per row, no segment ids)."""
    model, _, _, batch, _ = rollout
    _, params, mb, den, fn = _step_parts(model, batch, packed)
    _, sums = jax.jit(fn)(params, None, mb, den)
    assert float(sums["logprob_gap"] / den["tokens"]) < 1e-4  # mean |trainer - sampler| per token


def test_on_policy_gradient_is_reinforce_with_group_baseline(rollout):
    model, _, _, batch, adv = rollout
    graphdef, params, mb, den, fn = _step_parts(model, batch)
    grads = jax.grad(lambda p: fn(p, None, mb, den)[0])(params)

    def reinforce(p):  # -(1/N) sum_i A_i sum_t log pi(y_t), full logits at the rollout temperature
        m = nnx.merge(graphdef, p)
        h = m(mb["tokens"], mb["positions"], attn_mask=mb["segment_ids"] > 0)
        logp = jax.nn.log_softmax(m.logits(h) / TEMP, axis=-1)
        lp = jnp.take_along_axis(logp, mb["labels"][..., None], -1)[..., 0]
        mask = mb["loss_mask"].astype(jnp.float32)
        return -jnp.sum(jnp.asarray(adv, jnp.float32)[:, None] * lp * mask) / jnp.sum(mask)

    ref = jax.grad(reinforce)(params)
    flat = lambda t: np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(t)])  # noqa: E731
    g, r = flat(grads), flat(ref)
    assert np.abs(r).max() > 1e-3
    np.testing.assert_allclose(g, r, atol=1e-5 * np.abs(r).max() + 1e-7)


def test_prompt_order_and_group_stats():
    a = prompt_indices(0, 6, 10, seed=1)
    b = prompt_indices(1, 6, 10, seed=1)
    assert sorted(np.concatenate([a, b])[:10].tolist()) == list(range(10))  # one epoch covers every prompt once
    np.testing.assert_array_equal(prompt_indices(1, 6, 10, seed=1), b)  # a pure function of the step
    s = group_stats(np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0], np.float32), 4)
    assert s["reward_mean"] == pytest.approx(5 / 12) and s["pass_at_4"] == pytest.approx(2 / 3)
    assert s["solve_all_rate"] == pytest.approx(1 / 3) and s["zero_variance_frac"] == pytest.approx(2 / 3)
