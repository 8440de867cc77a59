"""SFT cross-entropy and OXA (unlikelihood) against float64 NumPy references, values and gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exploresft_jax import losses

B, T, V = 4, 9, 11


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def grad_from_dlp(z, y, dlp):
    """Gradient w.r.t. logits of a loss that depends on them only through the label log-probs,
    given dL/dlogprob [B,T]:  dL/dz = dlp * (onehot - p)."""
    p = np.exp(np_log_softmax(z))
    return dlp[..., None] * (np.eye(z.shape[-1])[y] - p)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    z = (2.0 * rng.normal(size=(B, T, V))).astype(np.float32)
    y = rng.integers(0, V, size=(B, T)).astype(np.int32)
    mask = np.ones((B, T), np.float32)
    mask[0, 6:] = 0
    mask[2, :2] = 0
    mask[3, 4:] = 0
    is_neg = np.array([False, True, False, True])
    lp64 = np.take_along_axis(np_log_softmax(z.astype(np.float64)), y[..., None], -1)[..., 0]
    return dict(z=z, y=y, mask=mask, is_neg=is_neg, lp64=lp64)


def test_sft_loss_value_grad(batch):
    z, y, m = batch["z"], batch["y"], batch["mask"]
    f = jax.jit(jax.value_and_grad(lambda z: losses.sft_loss(z, y, m), has_aux=True))
    (loss, met), g = f(z)
    n = m.sum()
    ref = -(batch["lp64"] * m).sum() / n
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_allclose(met["nll_sum"] / met["token_count"], ref, rtol=1e-6)
    np.testing.assert_allclose(g, grad_from_dlp(z.astype(np.float64), y, -m / n), atol=1e-6)


def test_sft_exact_under_micro_batching(batch):
    z, y, m = batch["z"], batch["y"], batch["mask"]
    f = jax.jit(lambda z, y, m, n: losses.sft_loss(z, y, m, denominator=n)[0])
    full = f(z, y, m, None)
    n = m.sum()
    parts = [f(z[s], y[s], m[s], n) for s in (slice(0, 1), slice(1, 4))]
    np.testing.assert_allclose(sum(parts), full, rtol=1e-6)
    # the naive mean of micro-batch means is different here (unequal token counts): the test can fail
    naive = np.mean([f(z[s], y[s], m[s], None) for s in (slice(0, 1), slice(1, 4))])
    assert abs(naive - float(full)) > 1e-3


@pytest.mark.parametrize("p", [1e-12, 1e-4, 0.3, 0.5, 0.7, 0.999, 1 - 1e-5, 1 - 2e-6])
def test_unlikelihood_value_stable(p):
    # float64 reference; float32 input log p = log(p)
    lp = np.float32(math.log(p))
    got = float(losses.unlikelihood_per_token(jnp.asarray(lp), eps=1e-6))
    p32 = math.exp(float(lp))
    ref = -math.log1p(-min(p32, 1 - 1e-6))
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-9)


def test_unlikelihood_clamp_and_zero_gradient_above():
    f = jax.grad(lambda lp: losses.unlikelihood_per_token(lp, eps=1e-3))
    assert float(f(jnp.float32(math.log(1 - 1e-4)))) == 0.0
    np.testing.assert_allclose(losses.unlikelihood_per_token(jnp.float32(0.0), eps=1e-3), -math.log(1e-3), rtol=1e-4)
    assert np.isfinite(float(f(jnp.float32(-1e-9))))


def test_unlikelihood_label_logit_gradient_is_p(batch):
    z, y = batch["z"][:1, :5], batch["y"][:1, :5]
    z = z.copy()
    z[0, 0, y[0, 0]] += 6.0  # a confident token (p ~ 0.99)
    g = jax.jit(jax.grad(lambda z: jnp.sum(losses.unlikelihood_per_token(losses.token_logprobs(z, y)))))(z)
    p = np.exp(np_log_softmax(z.astype(np.float64)))
    p_y = np.take_along_axis(p, y[..., None], -1)[..., 0]
    g_y = np.take_along_axis(np.asarray(g), y[..., None], -1)[..., 0]
    np.testing.assert_allclose(g_y, p_y, rtol=1e-4, atol=1e-6)
    # the push on the other logits sums to -p
    np.testing.assert_allclose(np.asarray(g).sum(-1) - g_y, -p_y, rtol=1e-4, atol=1e-6)


def _np_oxa(batch, ul_weight, eps, w=None):
    lp, m, neg = batch["lp64"], batch["mask"].astype(np.float64), batch["is_neg"]
    c = m.sum(-1)
    w = np.ones(B) if w is None else w
    p = np.minimum(np.exp(lp), 1 - eps)
    ul_tok = -np.log1p(-p)
    ce_i = (-lp * m).sum(-1) / c
    ul_i = (ul_tok * m).sum(-1) / c
    n_pos, n_neg = (~neg).sum(), neg.sum()
    loss = (w * ce_i)[~neg].sum() / n_pos + ul_weight * (w * ul_i)[neg].sum() / n_neg
    # dL/dlp per token
    dul_dlp = np.exp(lp) / (1 - np.exp(lp))
    dlp = np.where(neg[:, None], ul_weight * w[:, None] * dul_dlp * m / c[:, None] / n_neg,
                   -w[:, None] * m / c[:, None] / n_pos)
    return loss, dlp


@pytest.mark.parametrize("weighted", [False, True])
def test_oxa_loss_both_terms_value_grad(batch, weighted):
    z, y, m, neg = batch["z"], batch["y"], batch["mask"], batch["is_neg"]
    w = np.array([0.5, 1.5, 1.2, 0.8], np.float32) if weighted else None
    f = jax.jit(jax.value_and_grad(lambda z: losses.oxa_loss(z, y, m, neg, ul_weight=0.3, sample_weight=w),
                                   has_aux=True))
    (loss, met), g = f(z)
    ref, dlp = _np_oxa(batch, 0.3, 1e-6, None if w is None else w.astype(np.float64))
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(g, grad_from_dlp(z.astype(np.float64), y, dlp), atol=1e-6)
    assert float(met["num_positive"]) == 2 and float(met["num_negative"]) == 2
    assert float(met["ce"]) > 0 and float(met["ul"]) > 0


def test_oxa_micro_batching_with_global_counts(batch):
    z, y, m, neg = batch["z"], batch["y"], batch["mask"], batch["is_neg"]
    f = jax.jit(lambda z, y, m, neg, npos, nneg: losses.oxa_loss(z, y, m, neg, ul_weight=0.3, num_positive=npos,
                                                                 num_negative=nneg)[0])
    full = f(z, y, m, neg, None, None)
    tot = 0.0
    for s in (slice(0, 1), slice(1, 3), slice(3, 4)):  # includes micro-batches holding only one kind
        tot += f(z[s], y[s], m[s], neg[s], 2, 2)
    np.testing.assert_allclose(tot, full, rtol=1e-6)


def test_unlikelihood_loss_matches_reference(batch):
    z, y, m = batch["z"], batch["y"], batch["mask"]
    loss, _ = losses.unlikelihood_loss(z, y, m)
    p = np.minimum(np.exp(batch["lp64"]), 1 - 1e-6)
    per = (-np.log1p(-p) * m).sum(-1) / m.sum(-1)
    np.testing.assert_allclose(loss, per.mean(), rtol=1e-5)


def test_perplexity_weights(batch):
    lp, m = batch["lp64"].astype(np.float32), batch["mask"]
    valid = np.array([True, False, True, True])
    w = np.asarray(losses.perplexity_weights(lp, m, alpha=1.0, valid=valid))
    ppl = np.exp(-(batch["lp64"] * m).sum(-1) / m.sum(-1))
    ref = np.where(valid, ppl / ppl[valid].mean(), 0.0)
    np.testing.assert_allclose(w, ref, rtol=1e-5)
    np.testing.assert_allclose(losses.perplexity_weights(lp, m, alpha=0.0), np.ones(B), rtol=1e-6)
