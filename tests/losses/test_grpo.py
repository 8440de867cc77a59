"""GRPO advantages and clipped loss against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exploresft_jax import losses

AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def test_advantages_worked_example():
    r = jnp.array([1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(losses.grpo_advantages(r, 4), np.array([1.5, -0.5, -0.5, -0.5]) * 0.5 / (0.5 + 1e-6),
                               rtol=1e-6)
    np.testing.assert_allclose(losses.grpo_advantages(r, 4, scale="none"), [0.75, -0.25, -0.25, -0.25], rtol=1e-6)
    # not the population std (which would give 1.732)
    assert float(losses.grpo_advantages(r, 4)[0]) == pytest.approx(1.499997, abs=1e-6)


def test_advantages_batch_scale_zero_variance_and_singletons():
    r = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    adv, info = losses.grpo_advantages(jnp.asarray(r), 4, scale="batch", eps=1e-4, return_info=True)
    g = r.reshape(3, 4)
    ref = ((g - g.mean(1, keepdims=True)) / (r.std(ddof=1) + 1e-4)).reshape(-1)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(info["zero_variance"], [False] * 4 + [True] * 4 + [False] * 4)
    np.testing.assert_allclose(info["frac_zero_variance"], 1 / 3, rtol=1e-6)
    assert (np.asarray(adv)[4:8] == 0).all()
    np.testing.assert_allclose(losses.grpo_advantages(jnp.asarray(r), 1), r / (1 + 1e-6), rtol=1e-6)  # G = 1
    grp = losses.grpo_advantages(jnp.asarray(r), 4)
    ref = ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(grp, ref, rtol=1e-5)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(7)
    b, t = 4, 6
    logp = rng.uniform(-3.0, -0.1, size=(b, t)).astype(np.float32)
    old = (logp + rng.normal(scale=0.4, size=(b, t))).astype(np.float32)
    ref = (logp + rng.normal(scale=0.3, size=(b, t))).astype(np.float32)
    adv = np.array([1.2, -0.7, 0.4, -1.5], np.float32)
    m = np.ones((b, t), np.float32)
    m[0, 4:] = 0
    m[2, 2:] = 0
    m[3, 5:] = 0
    ent = rng.uniform(0.0, 2.0, size=(b, t)).astype(np.float32)
    return logp, old, ref, adv, m, ent


def np_grpo(logp, old, ref, adv, m, *, cl, ch, dual, kl_coef, est, agg, max_len):
    """float64 per-token loss and dL/dlogp, then aggregation."""
    logp, old, ref = (x.astype(np.float64) for x in (logp, old, ref))
    A = np.broadcast_to(adv.astype(np.float64)[:, None], logp.shape)
    r = np.exp(logp - old)
    rc = np.clip(r, 1 - cl, 1 + ch)
    pg = np.maximum(-A * r, -A * rc)
    d_pg = np.where(-A * r >= -A * rc, -A * r, 0.0)  # clipped branch is constant in logp
    if dual is not None:
        capped = (A < 0) & (pg > -A * dual)
        pg = np.where(capped, -A * dual, pg)
        d_pg = np.where(capped, 0.0, d_pg)
    d = logp - ref
    kl, dkl = {"k1": (d, np.ones_like(d)), "k2": (0.5 * d * d, d), "k3": (np.exp(-d) + d - 1, 1 - np.exp(-d))}[est]
    lt, dlt = pg + kl_coef * kl, d_pg + kl_coef * dkl
    L = m.sum(1)
    nseq = (L > 0).sum()
    if agg == "token-mean":
        w = m / m.sum()
    elif agg == "seq-mean-token-mean":
        w = m / np.maximum(L, 1)[:, None] / nseq
    elif agg == "seq-mean-token-sum":
        w = m / nseq
    else:
        w = m / (nseq * max_len)
    return (lt * w).sum(), dlt * w, r


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("cfg", [dict(cl=0.2, ch=0.28, dual=3.0, kl_coef=0.1, est="k3"),
                                 dict(cl=0.1, ch=0.1, dual=None, kl_coef=0.05, est="k2"),
                                 dict(cl=0.2, ch=0.2, dual=1.5, kl_coef=0.3, est="k1")])
def test_grpo_loss_value_grad(batch, agg, cfg):
    logp, old, ref, adv, m, _ = batch
    f = jax.jit(jax.value_and_grad(lambda lp: losses.grpo_loss(
        lp, old, adv, m, ref_logp=ref, clip_low=cfg["cl"], clip_high=cfg["ch"], dual_clip=cfg["dual"],
        kl_coef=cfg["kl_coef"], kl_estimator=cfg["est"], aggregation=agg, max_len=8), has_aux=True))
    (loss, met), g = f(jnp.asarray(logp))
    ref_loss, ref_g, r = np_grpo(logp, old, ref, adv, m, max_len=8, agg=agg, **cfg)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-7)
    A = np.broadcast_to(adv[:, None], m.shape)
    on = m > 0
    np.testing.assert_allclose(met["clipfrac_low"], ((A < 0) & (r < 1 - cfg["cl"]))[on].mean(), atol=1e-7)
    np.testing.assert_allclose(met["clipfrac_high"], ((A > 0) & (r > 1 + cfg["ch"]))[on].mean(), atol=1e-7)
    dual = 0.0 if cfg["dual"] is None else ((A < 0) & (r > cfg["dual"]))[on].mean()
    np.testing.assert_allclose(met["clipfrac_dual"], dual, atol=1e-7)
    np.testing.assert_allclose(met["ratio_max"], r[on].max(), rtol=1e-5)
    np.testing.assert_allclose(met["ratio_min"], r[on].min(), rtol=1e-5)


def test_clip_fractions_nonzero_in_fixture(batch):
    logp, old, _, adv, m, _ = batch
    _, met = losses.grpo_loss(logp, old, adv, m, clip_low=0.2, clip_high=0.28, dual_clip=1.5)
    assert float(met["clipfrac_low"]) > 0 and float(met["clipfrac_high"]) > 0 and float(met["clipfrac_dual"]) > 0


def test_on_policy_gradient_is_reinforce():
    """ratio 1: gradient w.r.t. the logits equals -A * grad log pi (token mean)."""
    rng = np.random.default_rng(8)
    z = rng.normal(size=(3, 5, 11)).astype(np.float32)
    y = rng.integers(0, 11, size=(3, 5))
    adv = np.array([1.0, -0.5, 2.0], np.float32)
    m = np.ones((3, 5), np.float32)

    def loss(z):
        lp = losses.token_logprobs(z, y)
        return losses.grpo_loss(lp, jax.lax.stop_gradient(lp), adv, m, clip_low=0.2, clip_high=0.2)[0]

    g = jax.jit(jax.grad(loss))(z)
    zz = z.astype(np.float64) - z.max(-1, keepdims=True)
    p = np.exp(zz) / np.exp(zz).sum(-1, keepdims=True)
    grad_logpi = np.eye(11)[y] - p
    np.testing.assert_allclose(g, -adv[:, None, None] * grad_logpi / m.sum(), atol=1e-6)


@pytest.mark.parametrize("agg", AGGS)
def test_aggregation_invariant_to_micro_batching(batch, agg):
    logp, old, ref, adv, m, ent = batch
    kw = dict(ref_logp=ref, kl_coef=0.1, dual_clip=3.0, aggregation=agg, max_len=8)

    @jax.jit
    def vg(lp, old, adv, m, ref, n_tok, n_seq):
        return jax.value_and_grad(lambda lp: losses.grpo_loss(
            lp, old, adv, m, **{**kw, "ref_logp": ref}, num_tokens=n_tok, num_seqs=n_seq)[0])(lp)

    def loss_and_grad(s, num_tokens=None, num_seqs=None):
        return vg(logp[s], old[s], adv[s], m[s], ref[s], num_tokens, num_seqs)

    full, gfull = loss_and_grad(slice(None))
    n_tok, n_seq = m.sum(), (m.sum(1) > 0).sum()
    parts = [loss_and_grad(s, num_tokens=n_tok, num_seqs=n_seq) for s in (slice(0, 1), slice(1, 3), slice(3, 4))]
    np.testing.assert_allclose(sum(p[0] for p in parts), full, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), gfull, rtol=1e-6, atol=1e-8)


def test_kl_estimators_and_entropy_metric(batch):
    logp, old, ref, adv, m, ent = batch
    d = logp.astype(np.float64) - ref
    for est, val in {"k1": d, "k2": 0.5 * d * d, "k3": np.exp(-d) + d - 1}.items():
        np.testing.assert_allclose(losses.kl_penalty(logp, ref, est), val, rtol=1e-5, atol=1e-7)
        _, met = losses.grpo_loss(logp, old, adv, m, ref_logp=ref, kl_estimator=est, entropy=ent)
        np.testing.assert_allclose(met["kl"], (val * m).sum() / m.sum(), rtol=1e-5)
    np.testing.assert_allclose(met["entropy"], (ent * m).sum() / m.sum(), rtol=1e-6)
    with pytest.raises(ValueError):
        losses.grpo_loss(logp, old, adv, m, aggregation="mean")


def test_k3_is_clamped_as_verl_does():
    """k3 = exp(-d) + d - 1 with d clamped to [-20, 20] and the value to [-10, 10]; zero gradient beyond."""
    d = np.array([-30.0, -3.0, -0.5, 0.0, 0.7, 11.5, 25.0], np.float32)
    ref = np.zeros_like(d)
    got = np.asarray(losses.kl_penalty(jnp.asarray(d), jnp.asarray(ref), "k3"))
    dc = np.clip(d.astype(np.float64), -20, 20)
    np.testing.assert_allclose(got, np.clip(np.exp(-dc) + dc - 1, -10, 10), rtol=1e-6)
    assert got[0] == 10.0 and got[1] == 10.0 and got[-1] == 10.0  # exp(3) + ... = 16.1 -> 10
    grad = np.asarray(jax.grad(lambda x: losses.kl_penalty(x, jnp.asarray(ref), "k3").sum())(jnp.asarray(d)))
    np.testing.assert_allclose(grad[2:5], 1 - np.exp(-d[2:5]), rtol=1e-5)
    assert grad[0] == grad[1] == grad[5] == grad[6] == 0  # d = 11.5 gives 10.5 > 10: clamped
