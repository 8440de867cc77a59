"""The train step: gradient accumulation invariance, CurioSFT(tau=1, live teacher) == SFT, skipped updates,
the lagged teacher's mixing, restore onto another mesh, unpacked rows (no segment ids) == packed rows."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from exploresft_jax import sharding as shd
from exploresft_jax.models import attention as A
from exploresft_jax.models.qwen2 import Qwen2Config, init_model
from exploresft_jax.train.checkpoint import Checkpointer
from exploresft_jax.train.objectives import CurioOptions, EntropyRegOptions, OXAOptions, SFTOptions
from exploresft_jax.train.optim import make_optimizer
from exploresft_jax.train.step import (
    StepConfig,
    batch_denominators,
    init_train_state,
    micro_loss,
    split_model,
    train_step,
)

CFG = Qwen2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, dtype="float32")
OPTIM = ml_collections.ConfigDict(dict(lr=1e-2, schedule="constant", warmup_ratio=0.0, warmup_steps=0,
                                       min_lr_ratio=0.0, cosine_horizon_factor=1.0, b1=0.9, b2=0.95, eps=1e-8,
                                       weight_decay=0.1, clip_norm=1.0))


def make_batch(rows=8, t=12, seed=0, negatives=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 48, (rows, t)).astype(np.int32)
    lengths = rng.integers(6, t + 1, rows)
    seg = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    labels = np.concatenate([tokens[:, 1:], np.zeros((rows, 1), np.int32)], 1) * seg
    loss_mask = seg.copy()
    loss_mask[:, :3] = 0  # the prompt
    loss_mask[np.arange(rows), lengths - 1] = 0  # the last token predicts nothing
    is_neg = np.zeros(rows, np.int32)
    is_neg[:negatives] = 1
    return {"tokens": tokens, "labels": labels.astype(np.int32), "loss_mask": loss_mask,
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (rows, t)).copy(), "segment_ids": seg,
            "is_negative": is_neg, "weight": np.ones(rows, np.float32)}


def as_micro(batch, micro):
    return {k: jnp.asarray(v.reshape(micro, v.shape[0] // micro, *v.shape[1:])) for k, v in batch.items()}


@functools.cache
def stepper(sc: StepConfig, adam_eps: float | None = None):
    model = init_model(CFG, seed=3)
    optim = OPTIM if adam_eps is None else ml_collections.ConfigDict({**OPTIM.to_dict(), "eps": adam_eps})
    tx, schedule = make_optimizer(optim, 100)
    graphdef, state = init_train_state(model, tx, sc)
    fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, sc=sc))
    return fn, state


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("method", ["sft", "oxa"])
def test_accumulation_1_vs_4_gives_the_same_update(method):
    sc = StepConfig(method=method, chunk_size=5, vocab_chunk_size=16,
                    options=OXAOptions(ul_weight=0.5) if method == "oxa" else None)
    # Adam's first step is sign-like (lr * g / (|g| + eps)), so with eps = 1e-8 rounding-level gradient
    # differences on near-zero entries move the update by a fraction of lr. With eps = 1 the first update is
    # lr * g / (|g| + 1), a smooth function of the gradient: equal updates then mean equal gradients.
    fn, state = stepper(sc, adam_eps=1.0)
    batch = make_batch(negatives=4 if method == "oxa" else 0)
    s1, m1 = fn(state, as_micro(batch, 1))
    s4, m4 = fn(state, as_micro(batch, 4))
    np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m4["grad_norm"]), rtol=1e-4)
    p0 = flat(state.params)
    d1, d4 = flat(s1.params) - p0, flat(s4.params) - p0
    np.testing.assert_allclose(d1, d4, rtol=1e-3, atol=1e-8)
    assert np.abs(d1).max() > 1e-5  # the update did move the parameters
    if method == "oxa":
        np.testing.assert_allclose(float(m1["ul"]), float(m4["ul"]), rtol=1e-5)


def test_oxa_loss_is_per_sample_mean_of_ce_plus_weighted_ul():
    sc = StepConfig(method="oxa", chunk_size=5, vocab_chunk_size=16, options=OXAOptions(ul_weight=0.5))
    fn, state = stepper(sc)
    batch = make_batch(negatives=3)
    _, m = fn(state, as_micro(batch, 2))
    model = nnx.merge(nnx.split(init_model(CFG, seed=3))[0], state.params)
    hidden = model(jnp.asarray(batch["tokens"]), jnp.asarray(batch["positions"]),
                   segment_ids=jnp.asarray(batch["segment_ids"]), attn_mask=jnp.asarray(batch["segment_ids"] > 0))
    logits = np.asarray(model.logits(hidden), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    lp = np.take_along_axis(logp, batch["labels"][..., None], -1)[..., 0]
    mask = batch["loss_mask"].astype(np.float64)
    p = np.exp(lp)
    ce_i = (-lp * mask).sum(1) / mask.sum(1)
    ul_i = (-np.log1p(-np.minimum(p, 1 - 1e-6)) * mask).sum(1) / mask.sum(1)
    neg = batch["is_negative"].astype(bool)
    expected = ce_i[~neg].mean() + 0.5 * ul_i[neg].mean()
    np.testing.assert_allclose(float(m["loss"]), expected, rtol=1e-5)


def test_curio_with_tau_1_and_live_teacher_equals_sft():
    sft_fn, state = stepper(StepConfig(method="sft", chunk_size=5, vocab_chunk_size=16))
    cur_fn, state_c = stepper(StepConfig(method="curio", chunk_size=5, vocab_chunk_size=16,
                                         options=CurioOptions(teacher="live", fixed_tau=1.0)))
    batch = as_micro(make_batch(seed=4), 2)
    s_a, m_a = sft_fn(state, batch)
    s_b, m_b = cur_fn(state_c, batch)
    assert abs(float(m_b["sed"])) < 1e-10
    np.testing.assert_allclose(float(m_a["loss"]), float(m_b["loss"]), rtol=1e-6)
    np.testing.assert_allclose(flat(s_a.params), flat(s_b.params), atol=5e-3 * OPTIM.lr)  # see the test above
    assert np.mean(np.abs(flat(s_a.params) - flat(s_b.params)) < 1e-7) > 0.999


def test_lagged_teacher_is_mixed_every_sync_steps():
    sc = StepConfig(method="curio", chunk_size=6, vocab_chunk_size=16,
                    options=CurioOptions(sync_every=2, alpha=0.75))
    fn, state = stepper(sc)
    batch = as_micro(make_batch(seed=5), 1)
    s1, _ = fn(state, batch)  # step 1: no sync, the teacher stays the base model
    np.testing.assert_array_equal(flat(s1.teacher), flat(state.teacher))
    s2, _ = fn(s1, batch)  # step 2: teacher <- 0.25 * teacher + 0.75 * params(after step 1)
    np.testing.assert_allclose(flat(s2.teacher), 0.25 * flat(state.teacher) + 0.75 * flat(s1.params), atol=1e-6)


def test_non_finite_gradient_skips_the_update():
    fn, state = stepper(StepConfig(method="sft", chunk_size=5, vocab_chunk_size=16))
    bad = jax.tree.map(lambda x: x.at[...].set(jnp.nan) if x.ndim == 3 and x.shape[1] == 32 else x, state.params)
    state_bad = state.__class__(step=state.step, params=bad, opt_state=state.opt_state, teacher=None)
    new, m = fn(state_bad, as_micro(make_batch(), 1))
    assert int(m["skipped"]) == 1 and int(new.step) == 1
    np.testing.assert_array_equal(flat(new.opt_state), flat(state.opt_state))


def test_restore_onto_a_different_mesh(tmp_path):
    sc = StepConfig(method="sft")
    tx, _ = make_optimizer(OPTIM, 10)
    mesh_a, mesh_b = shd.make_mesh((1, 8, 1)), shd.make_mesh((2, 2, 2))
    _, state_a = init_train_state(init_model(CFG, seed=1, mesh=mesh_a, rules=shd.TRAIN_RULES), tx, sc)
    ck = Checkpointer(tmp_path, every_steps=1, keep=1, async_save=False)
    ck.save(1, state_a, {"step": 1}, {"method": "sft"})
    ck.wait()
    _, like_b = init_train_state(init_model(CFG, seed=2, mesh=mesh_b, rules=shd.TRAIN_RULES), tx, sc)
    restored, data_state, config = ck.restore(like_b)
    ck.close()
    assert data_state == {"step": 1} and config == {"method": "sft"}
    for a, b, like in zip(jax.tree.leaves(state_a), jax.tree.leaves(restored), jax.tree.leaves(like_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding == like.sharding
    q = restored.params["layers"]["q_kernel"]
    assert q.sharding.spec == shd.logical_to_spec(("layers", "embed", "q_heads", "head_dim"), shd.TRAIN_RULES,
                                                  mesh_b, q.shape)


@pytest.mark.parametrize("sc", [
    StepConfig(method="oxa", chunk_size=5, vocab_chunk_size=16,
               options=OXAOptions(ul_weight=0.5, sample_weighting="perplexity", weight_alpha=4.0)),
    StepConfig(method="entropy_reg", chunk_size=5, vocab_chunk_size=16,
               options=EntropyRegOptions(coef=0.5, top_fraction=0.3)),
], ids=["oxa_perplexity_weights", "entropy_reg_top_fraction"])
def test_step_wide_statistics_do_not_depend_on_micro_batches(sc):
    # Perplexity weights are normalised over the step's CE examples and the top-rho tokens are chosen among the
    # step's tokens: both must come out the same however the step is split into micro-batches.
    fn, state = stepper(sc, adam_eps=1.0)
    batch = make_batch(seed=7, negatives=2 if sc.method == "oxa" else 0)
    s1, m1 = fn(state, as_micro(batch, 1))
    s4, m4 = fn(state, as_micro(batch, 4))
    np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-5)
    p0 = flat(state.params)
    d1, d4 = flat(s1.params) - p0, flat(s4.params) - p0
    np.testing.assert_allclose(d1, d4, rtol=1e-3, atol=1e-8)
    assert np.abs(d1).max() > 1e-5
    if sc.method == "entropy_reg":
        np.testing.assert_allclose(float(m1["entropy_bonus"]), float(m4["entropy_bonus"]), rtol=1e-5)


def test_oxa_without_ul_data_equals_sft_with_per_sample_normalisation():
    # OXA-MLE (no UL rows): OXA's CE term, a mean over examples of each example's token mean.
    batch = as_micro(make_batch(seed=4), 2)
    lengths = batch["loss_mask"].sum(-1)
    assert len(set(np.asarray(lengths).ravel().tolist())) > 1  # examples of different lengths
    fn_o, state_o = stepper(StepConfig(method="oxa", chunk_size=5, vocab_chunk_size=16,
                                       options=OXAOptions(ul_weight=0.5)))
    s_o, m_o = fn_o(state_o, batch)
    fn_s, state = stepper(StepConfig(method="sft", chunk_size=5, vocab_chunk_size=16,
                                       options=SFTOptions(normalization="sample")))
    s_s, m_s = fn_s(state, batch)
    fn_t, state_t = stepper(StepConfig(method="sft", chunk_size=5, vocab_chunk_size=16))
    s_t, m_t = fn_t(state_t, batch)
    np.testing.assert_allclose(float(m_o["loss"]), float(m_s["loss"]), rtol=1e-6)
    np.testing.assert_allclose(flat(s_o.params), flat(s_s.params), rtol=0, atol=1e-7)
    assert abs(float(m_t["loss"]) - float(m_s["loss"])) > 1e-4  # token mean weights long examples more
    # both normalisations against float64 NumPy
    model = nnx.merge(nnx.split(init_model(CFG, seed=3))[0], state.params)
    b = make_batch(seed=4)
    hidden = model(jnp.asarray(b["tokens"]), jnp.asarray(b["positions"]), segment_ids=jnp.asarray(b["segment_ids"]),
                   attn_mask=jnp.asarray(b["segment_ids"] > 0))
    logits = np.asarray(model.logits(hidden), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, b["labels"][..., None], -1)[..., 0]
    mask = b["loss_mask"].astype(np.float64)
    np.testing.assert_allclose(float(m_s["loss"]), ((nll * mask).sum(1) / mask.sum(1)).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m_t["loss"]), (nll * mask).sum() / mask.sum(), rtol=1e-5)


@pytest.mark.parametrize("divergence", ["k2", "forward_kl", "reverse_kl"])
def test_curio_divergences_train_and_match_the_loss_library(divergence):
    from exploresft_jax import losses

    sc = StepConfig(method="curio", chunk_size=5, vocab_chunk_size=16, options=CurioOptions(divergence=divergence))
    fn, state = stepper(sc)
    b = make_batch(seed=6)
    batch = as_micro(b, 1)
    # Step 1 (no sync yet): the lagged teacher is the initial model, so the library sees the same logits twice.
    model = nnx.merge(nnx.split(init_model(CFG, seed=3))[0], state.params)
    logits = model.logits(model(jnp.asarray(b["tokens"]), jnp.asarray(b["positions"]),
                                segment_ids=jnp.asarray(b["segment_ids"]), attn_mask=jnp.asarray(b["segment_ids"] > 0)))
    want, want_m = losses.curio_sft_loss(logits, logits, jnp.asarray(b["labels"]), jnp.asarray(b["loss_mask"]),
                                         coef=sc.options.coef, divergence=divergence, **sc.options.tau_kwargs)
    got = []
    for _ in range(4):
        state, m = fn(state, batch)
        got.append(float(m["loss"]))
    np.testing.assert_allclose(got[0], float(want), rtol=1e-5)
    assert float(want_m["sed"]) > 1e-4  # the divergence term is really there (tau > 1)
    assert np.all(np.isfinite(got)) and got[-1] < got[0]


def test_warmup_starts_at_lr_0():
    # HuggingFace's linear warm-up: lr * step / warmup_steps, so the first update is taken at lr 0.
    from exploresft_jax.train.optim import lr_schedule

    for kind in ("cosine", "constant"):
        fn = lr_schedule(2.0, 100, schedule=kind, warmup_steps=4)
        np.testing.assert_allclose([float(fn(s)) for s in range(5)], [0.0, 0.5, 1.0, 1.5, 2.0], rtol=1e-6)
    np.testing.assert_allclose(float(lr_schedule(2.0, 100, warmup_steps=0)(0)), 2.0)


def test_logged_lr_after_a_skipped_step_is_the_lr_optax_applies():
    # optax's schedule counts applied updates only: after a skipped step, the next update is taken at
    # schedule(0), not schedule(1); the logged lr must say so.
    optim = ml_collections.ConfigDict({**OPTIM.to_dict(), "warmup_steps": 4})
    tx, schedule = make_optimizer(optim, 100)
    graphdef, state = init_train_state(init_model(CFG, seed=3), tx, StepConfig(method="sft"))
    fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                                   sc=StepConfig(method="sft", chunk_size=5, vocab_chunk_size=16)))
    batch = as_micro(make_batch(), 1)
    bad = jax.tree.map(lambda x: x.at[...].set(jnp.nan) if x.ndim == 3 and x.shape[1] == 32 else x, state.params)
    skipped, m_skip = fn(state.__class__(step=state.step, params=bad, opt_state=state.opt_state), batch)
    assert int(m_skip["skipped"]) == 1 and float(m_skip["lr"]) == float(schedule(0))
    resumed = state.__class__(step=skipped.step, params=state.params, opt_state=skipped.opt_state)
    fresh, lrs_fresh, lrs_resumed = state, [], []
    for _ in range(3):
        fresh, m_f = fn(fresh, batch)
        resumed, m_r = fn(resumed, batch)
        lrs_fresh.append(float(m_f["lr"]))
        lrs_resumed.append(float(m_r["lr"]))
    np.testing.assert_allclose(lrs_fresh, [float(schedule(s)) for s in range(3)], rtol=1e-6)
    assert lrs_resumed == lrs_fresh  # the same lrs are logged as applied: the step count does not matter
    np.testing.assert_allclose(flat(resumed.params), flat(fresh.params), rtol=0, atol=1e-7)
    assert int(resumed.step) == int(fresh.step) + 1


def test_step_config_packed_from_the_run_config():
    """packed=False where every row is one right-padded example: GRPO's rollouts and data.packing none."""
    from exploresft_jax import configs

    c = configs.get("tiny_cpu")
    for method, packing, packed in [("sft", "none", False), ("oxa", "none", False), ("sft", "examples", True),
                                    ("curio", "tokens", True), ("grpo", "tokens", False), ("grpo", "none", False)]:
        c.method, c.data.packing = method, packing
        assert StepConfig.from_config(c).packed is packed, (method, packing)
    c.method = "sft"
    for packing, packed in [(False, False), (True, True)]:  # older configs' booleans
        c.data = ml_collections.ConfigDict({"packing": packing})
        assert StepConfig.from_config(c).packed is packed, packing


@pytest.mark.parametrize("attention", ["auto", "cudnn"])
def test_unpacked_rows_give_the_loss_and_gradients_of_packed_rows(attention):
    """One right-padded example per row: packed=False (no segment ids, only the padding mask; cudnn's cuDNN
    path) gives the loss and gradients of packed=True (segment ids; cudnn's Triton path)."""
    model = init_model(dataclasses.replace(CFG, attention=attention), seed=3)
    graphdef, params, _ = split_model(model)
    batch = {k: jnp.asarray(v) for k, v in make_batch(rows=4, t=12, seed=5).items()}
    den = batch_denominators(batch)
    results = []
    for packed in (True, False):
        sc = StepConfig(method="sft", chunk_size=5, vocab_chunk_size=16, packed=packed)
        fn = jax.jit(jax.value_and_grad(functools.partial(micro_loss, graphdef=graphdef, sc=sc), has_aux=True))
        with A.emulate_kernels():
            (loss, _), grads = fn(params, None, batch, den)
        results.append((float(loss), flat(grads)))
    (l1, g1), (l0, g0) = results
    assert np.isfinite(l1) and np.abs(g1).max() > 1e-4
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    np.testing.assert_allclose(g0, g1, rtol=1e-4, atol=1e-6)
