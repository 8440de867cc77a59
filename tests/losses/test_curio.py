"""CurioSFT: temperatures on crafted distributions, the loss and its variants, chunked teacher terms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exploresft_jax import losses

V, K = 64, 16
TAU = dict(tau_min=1.1, tau_max=1.5, pivot=1.2, slope=2.0, max_increase=0.5, top_k=K, iters=20, floor=0.03)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_entropy(z):
    lp = np_log_softmax(z)
    return -(np.exp(lp) * lp).sum(-1)


def np_topk_entropy(z, tau=1.0):
    zk = -np.sort(-z, axis=-1)[..., :K]
    return np_entropy(zk / np.asarray(tau)[..., None])


def np_target(z):
    h = np_topk_entropy(z)
    return h + 0.5 / (1.0 + np.exp(-2.0 * (h - 1.2)))


@pytest.fixture(scope="module")
def crafted():
    """Rows: near one-hot, very flat, and LLM-like rows (a few candidates plus a far tail) of varied sharpness."""
    rng = np.random.default_rng(3)
    rows = []
    one_hot = np.full(V, -10.0)
    one_hot[5] = 10.0
    rows.append(one_hot)
    rows.append(0.01 * rng.normal(size=V))  # entropy ~ log V: even tau_max cannot add 0.5 nats
    for scale in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0):
        z = np.full(V, -8.0) + 0.3 * rng.normal(size=V)
        z[:6] = scale * rng.normal(size=6) + 2.0
        rows.append(rng.permutation(z))
    z = np.stack(rows).astype(np.float32)[None]  # [1, R, V]
    tau = np.asarray(jax.jit(lambda z: losses.curio_temperatures(z, **TAU))(z))
    return z, tau


def test_temperature_extremes(crafted):
    z, tau = crafted
    assert np_entropy(z[0, 0].astype(np.float64)) <= 0.03
    assert tau[0, 0] == pytest.approx(1.1)
    assert tau[0, 1] == pytest.approx(1.5)
    assert tau.dtype == np.float32 and ((tau >= 1.1 - 1e-7) & (tau <= 1.5 + 1e-7)).all()


def test_temperature_meets_target_entropy(crafted):
    z, tau = crafted
    z64 = z[0].astype(np.float64)
    t = tau[0].astype(np.float64)
    target = np_target(z64)
    interior = (t > 1.1 + 1e-4) & (t < 1.5 - 1e-4)
    assert interior.sum() >= 3, t  # the crafted rows exercise the bisection
    got = np_topk_entropy(z64[interior], t[interior])
    np.testing.assert_allclose(got, target[interior], atol=1e-4)
    # clamped rows really are out of reach
    lo, hi = t <= 1.1 + 1e-6, t >= 1.5 - 1e-6
    floor = np_entropy(z64) <= 0.03
    assert (target[lo & ~floor] <= np_topk_entropy(z64[lo & ~floor], 1.1) + 1e-5).all()
    assert (target[hi] >= np_topk_entropy(z64[hi], 1.5) - 1e-5).all()


def test_temperature_bf16_input_is_computed_in_fp32(crafted):
    z, tau = crafted
    zb = jnp.asarray(z, jnp.bfloat16)
    f = jax.jit(lambda z: losses.curio_temperatures(z, **TAU))
    got = f(zb)
    ref = f(jnp.asarray(zb, jnp.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, ref)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(4)
    b, t = 2, 7
    s = (2.0 * rng.normal(size=(b, t, V))).astype(np.float32)
    tz = (s + 0.5 * rng.normal(size=s.shape)).astype(np.float32)
    y = rng.integers(0, V, size=(b, t)).astype(np.int32)
    m = np.ones((b, t), np.float32)
    m[1, 5:] = 0
    tau = rng.uniform(1.1, 1.5, size=(b, t)).astype(np.float32)
    return s, tz, y, m, tau


def test_curio_k2_value_grad(batch):
    s, tz, y, m, tau = batch
    f = jax.jit(jax.value_and_grad(
        lambda s, tz: losses.curio_sft_loss(s, tz, y, m, coef=0.7, temperature=tau), argnums=(0, 1), has_aux=True))
    (loss, met), (gs, gt) = f(s, tz)
    s64, t64 = s.astype(np.float64), tz.astype(np.float64)
    onehot = np.eye(V)[y]
    lp = (np_log_softmax(s64) * onehot).sum(-1)
    tlp = (np_log_softmax(t64 / tau[..., None]) * onehot).sum(-1)
    n = m.sum()
    ref = ((-lp + 0.7 * 0.5 * (lp - tlp) ** 2) * m).sum() / n
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    dlp = m / n * (-1.0 + 0.7 * (lp - tlp))
    ref_g = dlp[..., None] * (onehot - np.exp(np_log_softmax(s64)))
    np.testing.assert_allclose(gs, ref_g, atol=1e-6)
    assert float(jnp.abs(gt).max()) == 0.0  # teacher gets no gradient
    np.testing.assert_allclose(met["tau"], (tau * m).sum() / n, rtol=1e-6)


def test_curio_default_uses_entropy_guided_tau(batch):
    s, tz, y, m, _ = batch
    tau = jax.jit(lambda tz: losses.curio_temperatures(tz, **TAU))(tz)
    a = jax.jit(lambda s, tz: losses.curio_sft_loss(s, tz, y, m, **TAU)[0])(s, tz)
    b = jax.jit(lambda s, tz, tau: losses.curio_sft_loss(s, tz, y, m, temperature=tau)[0])(s, tz, tau)
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_curio_full_vocab_divergences(batch, divergence):
    s, tz, y, m, tau = batch
    f = jax.jit(jax.value_and_grad(
        lambda s: losses.curio_sft_loss(s, tz, y, m, coef=0.5, divergence=divergence, temperature=tau)[0]))
    loss, g = f(s)
    s64 = s.astype(np.float64)
    logp = np_log_softmax(s64)
    logq = np_log_softmax(tz.astype(np.float64) / tau[..., None])
    p, q = np.exp(logp), np.exp(logq)
    onehot = np.eye(V)[y]
    lp = (logp * onehot).sum(-1)
    if divergence == "forward_kl":
        div = (q * (logq - logp)).sum(-1)
        ddiv = p - q
    else:
        div = (p * (logp - logq)).sum(-1)
        ddiv = p * ((logp - logq) - div[..., None])
    n = m.sum()
    np.testing.assert_allclose(loss, ((-lp + 0.5 * div) * m).sum() / n, rtol=1e-5)
    ref_g = (m / n)[..., None] * ((p - onehot) + 0.5 * ddiv)
    np.testing.assert_allclose(g, ref_g, atol=1e-6)


@pytest.mark.parametrize("chunk", [3, 7])
def test_chunked_teacher_equals_unchunked(batch, chunk):
    rng = np.random.default_rng(5)
    h = rng.normal(size=(2, 7, 8)).astype(np.float32)
    w = (1.5 * rng.normal(size=(V, 8))).astype(np.float32)
    y = batch[2]
    out = jax.jit(lambda h, w: losses.chunked_curio_teacher(h, w, y, chunk_size=chunk, **TAU))(h, w)
    z = jnp.einsum("btd,vd->btv", h, w)
    tau = jax.jit(lambda z: losses.curio_temperatures(z, **TAU))(z)
    np.testing.assert_allclose(out["tau"], tau, atol=1e-6)
    np.testing.assert_allclose(out["tempered_logprob"], losses.token_logprobs(z / tau[..., None], y), atol=1e-5)
    # with the student's chunked log-probs, the k2 loss equals the logits version
    @jax.jit
    def a_fn(h, w, tlp):
        st = losses.chunked_token_stats(h, w, y, chunk_size=chunk)
        return losses.curio_sft_loss_from_logprobs(st["logprob"], tlp, batch[3])[0]

    a = a_fn(h, w, out["tempered_logprob"])
    b = jax.jit(lambda z: losses.curio_sft_loss(z, z, y, batch[3], **TAU)[0])(z)
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_chunked_full_vocab_curio_equals_logits_version(batch, divergence):
    rng = np.random.default_rng(6)
    h = rng.normal(size=(2, 7, 8)).astype(np.float32)
    th = (h + 0.3 * rng.normal(size=h.shape)).astype(np.float32)
    w = (1.5 * rng.normal(size=(V, 8))).astype(np.float32)
    y, m = batch[2], batch[3]

    def chunked(h, w):
        tau = losses.chunked_curio_teacher(th, w, y, chunk_size=3, **TAU)["tau"]
        st = losses.chunked_token_stats(h, w, y, chunk_size=3, vocab_chunk_size=20, teacher_hidden=th,
                                        teacher_temperature=tau)
        return losses.curio_sft_loss_from_divergence(st["logprob"], st[divergence], m, coef=0.5)[0]

    def full(h, w):
        z = jnp.einsum("btd,vd->btv", h, w)
        zt = jax.lax.stop_gradient(jnp.einsum("btd,vd->btv", th, w))
        return losses.curio_sft_loss(z, zt, y, m, coef=0.5, divergence=divergence, **TAU)[0]

    a = jax.jit(jax.value_and_grad(full, argnums=(0, 1)))(h, w)
    b = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(h, w)
    for x, z in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(z, x, rtol=1e-4, atol=1e-5)
