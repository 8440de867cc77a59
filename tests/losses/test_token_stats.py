"""Token statistics: logits-based and chunked head against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exploresft_jax import losses

B, T, V, D = 2, 13, 37, 8


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_stats_and_grads(h, w, y, tau, g_lp, g_ent, g_tlp):
    """float64 values of logprob/entropy/tempered logprob and the analytic gradient of
    sum(g_lp*logprob + g_ent*entropy + g_tlp*tempered_logprob) w.r.t. hidden [B,T,D] and weight [V,D]."""
    h, w = h.astype(np.float64), w.astype(np.float64)
    z = np.einsum("btd,vd->btv", h, w)
    logp = np_log_softmax(z)
    p = np.exp(logp)
    ent = -(p * logp).sum(-1)
    onehot = np.eye(w.shape[0])[y]
    lp = (logp * onehot).sum(-1)
    logq = np_log_softmax(z / tau[..., None])
    q = np.exp(logq)
    tlp = (logq * onehot).sum(-1)
    # d logp_y / dz = onehot - p ; dH/dz = -p (log p + H) ; d logq_y / dz = (onehot - q) / tau
    dz = (g_lp[..., None] * (onehot - p) - g_ent[..., None] * p * (logp + ent[..., None])
          + (g_tlp / tau)[..., None] * (onehot - q))
    dh = np.einsum("btv,vd->btd", dz, w)
    dw = np.einsum("btv,btd->vd", dz, h)
    return {"logprob": lp, "entropy": ent, "tempered_logprob": tlp}, dh, dw


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return dict(
        h=rng.normal(size=(B, T, D)).astype(np.float32),
        w=(1.5 * rng.normal(size=(V, D))).astype(np.float32),
        y=rng.integers(0, V, size=(B, T)).astype(np.int32),
        tau=rng.uniform(1.0, 1.6, size=(B, T)).astype(np.float32),
        g=[rng.normal(size=(B, T)).astype(np.float32) for _ in range(3)],
    )


@pytest.fixture(scope="module")
def reference(data):
    d = data
    return np_stats_and_grads(d["h"], d["w"], d["y"], d["tau"].astype(np.float64),
                              *[g.astype(np.float64) for g in d["g"]])


def _objective(stats_fn, y, tau, g):
    def f(h, w):
        o = stats_fn(h, w, y, tau)
        return (jnp.sum(o["logprob"] * g[0]) + jnp.sum(o["entropy"] * g[1])
                + jnp.sum(o["tempered_logprob"] * g[2])), o
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


def test_logits_stats_match_numpy(data, reference):
    z = np.einsum("btd,vd->btv", data["h"], data["w"])
    ref, _, _ = reference
    np.testing.assert_allclose(losses.token_logprobs(jnp.asarray(z), data["y"]), ref["logprob"], atol=2e-5)
    np.testing.assert_allclose(losses.token_entropy(jnp.asarray(z)), ref["entropy"], atol=2e-5)
    # bf16 logits are upcast: results are float32
    assert losses.token_entropy(jnp.asarray(z, jnp.bfloat16)).dtype == jnp.float32


@pytest.mark.parametrize("chunk,vtile", [(4, 8), (13, 37), (5, 10), (1, 3), (64, 64), (6, 36)])
def test_chunked_matches_numpy_values_and_grads(data, reference, chunk, vtile):
    ref, dh_ref, dw_ref = reference

    def stats(h, w, y, tau):
        return losses.chunked_token_stats(h, w, y, chunk_size=chunk, vocab_chunk_size=vtile, temperature=tau)

    (_, out), (dh, dw) = _objective(stats, data["y"], data["tau"], data["g"])(data["h"], data["w"])
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], atol=3e-5, rtol=1e-5, err_msg=k)
        assert out[k].dtype == jnp.float32 and out[k].shape == (B, T)
    np.testing.assert_allclose(dh, dh_ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dw, dw_ref, atol=1e-4, rtol=1e-4)


def test_chunked_equals_unchunked_autodiff(data):
    """Chunked custom VJP against JAX autodiff through the full logits, scalar temperature."""
    def naive(h, w, y, tau):
        return losses.naive_token_stats(h, w, y, temperature=tau)

    def chunked(h, w, y, tau):
        return losses.chunked_token_stats(h, w, y, chunk_size=4, vocab_chunk_size=9, temperature=tau)

    (va, oa), ga = _objective(naive, data["y"], 1.3, data["g"])(data["h"], data["w"])
    (vb, ob), gb = _objective(chunked, data["y"], 1.3, data["g"])(data["h"], data["w"])
    np.testing.assert_allclose(vb, va, rtol=1e-5, atol=1e-4)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)


def test_chunked_forward_only_without_temperature(data, reference):
    ref, _, _ = reference
    f = jax.jit(lambda h, w, y: losses.chunked_token_stats(h, w, y, chunk_size=5, vocab_chunk_size=16))
    out = f(data["h"], data["w"], data["y"])
    assert set(out) == {"logprob", "entropy"}
    np.testing.assert_allclose(out["logprob"], ref["logprob"], atol=3e-5)
    np.testing.assert_allclose(out["entropy"], ref["entropy"], atol=3e-5)


def test_chunked_bf16_inputs(data):
    """bf16 activations and weight: float32 outputs and gradients in the input dtypes, close to the same
    computation through full logits."""
    h = jnp.asarray(data["h"], jnp.bfloat16)
    w = jnp.asarray(data["w"], jnp.bfloat16)

    def loss(fn):
        return jax.jit(jax.grad(lambda h, w: -jnp.sum(fn(h, w)["logprob"]) + jnp.sum(fn(h, w)["entropy"]),
                                argnums=(0, 1)))

    naive = loss(lambda h, w: losses.naive_token_stats(h, w, data["y"]))
    chunked = loss(lambda h, w: losses.chunked_token_stats(h, w, data["y"], chunk_size=5, vocab_chunk_size=10))
    ga, gb = naive(h, w), chunked(h, w)
    assert gb[0].dtype == jnp.bfloat16 and gb[1].dtype == jnp.bfloat16
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32), atol=0.05, rtol=0.02)
    out = losses.chunked_token_stats(h, w, data["y"], chunk_size=5)
    assert out["logprob"].dtype == jnp.float32


@pytest.mark.parametrize("used", [("logprob",), ("entropy",), ("tempered_logprob",), ("logprob", "tempered_logprob")])
def test_chunked_partial_use_of_outputs(data, reference, used):
    """Outputs left out of the loss (symbolic-zero cotangents) must not change the gradient of the others."""
    d = data
    g = {"logprob": d["g"][0], "entropy": d["g"][1], "tempered_logprob": d["g"][2]}

    def f(h, w):
        o = losses.chunked_token_stats(h, w, d["y"], chunk_size=4, vocab_chunk_size=10, temperature=d["tau"])
        return sum(jnp.sum(o[k] * g[k]) for k in used)

    dh, dw = jax.grad(f, argnums=(0, 1))(d["h"], d["w"])
    coef = [g[k].astype(np.float64) if k in used else np.zeros((B, T)) for k in ("logprob", "entropy",
                                                                                  "tempered_logprob")]
    _, dh_ref, dw_ref = np_stats_and_grads(d["h"], d["w"], d["y"], d["tau"].astype(np.float64), *coef)
    np.testing.assert_allclose(dh, dh_ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dw, dw_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk,vtile", [(4, 8), (13, 37), (6, 10)])
def test_chunked_teacher_divergences(data, chunk, vtile):
    """Full-vocabulary KL(q||p) and KL(p||q) to a tempered teacher: values and student gradients."""
    d = data
    rng = np.random.default_rng(9)
    th = (d["h"] + 0.5 * rng.normal(size=d["h"].shape)).astype(np.float32)
    tw = (d["w"] + 0.3 * rng.normal(size=d["w"].shape)).astype(np.float32)
    ttau = d["tau"]
    c_f, c_r = d["g"][0], d["g"][1]

    def f(h, w, th):
        o = losses.chunked_token_stats(h, w, d["y"], chunk_size=chunk, vocab_chunk_size=vtile, teacher_hidden=th,
                                       teacher_head_weight=tw, teacher_temperature=ttau)
        return jnp.sum(o["forward_kl"] * c_f) + jnp.sum(o["reverse_kl"] * c_r) + jnp.sum(o["teacher_logprob"]), o

    (_, out), (dh, dw, dth) = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(d["h"], d["w"], th)
    h64, w64 = d["h"].astype(np.float64), d["w"].astype(np.float64)
    z = np.einsum("btd,vd->btv", h64, w64)
    zt = np.einsum("btd,vd->btv", th.astype(np.float64), tw.astype(np.float64)) / ttau[..., None]
    logp, logq = np_log_softmax(z), np_log_softmax(zt)
    p, q = np.exp(logp), np.exp(logq)
    fkl = (q * (logq - logp)).sum(-1)
    rkl = (p * (logp - logq)).sum(-1)
    np.testing.assert_allclose(out["forward_kl"], fkl, atol=2e-5)
    np.testing.assert_allclose(out["reverse_kl"], rkl, atol=2e-5)
    np.testing.assert_allclose(out["teacher_logprob"], np.take_along_axis(logq, d["y"][..., None], -1)[..., 0],
                               atol=2e-5)
    np.testing.assert_allclose(out["teacher_entropy"], -(q * logq).sum(-1), atol=2e-5)
    dz = c_f[..., None] * (p - q) + c_r[..., None] * p * (logp - logq - rkl[..., None])
    np.testing.assert_allclose(dh, np.einsum("btv,vd->btd", dz, w64), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dw, np.einsum("btv,btd->vd", dz, h64), atol=1e-4, rtol=1e-4)
    assert float(jnp.abs(dth).max()) == 0.0


def test_chunked_grad_never_holds_full_logits():
    """Compile-only memory check: the temporaries of loss+grad stay well under one [B,T,V] float32 array,
    while autodiff through full logits needs several."""
    b, t, v, dim = 1, 512, 4096, 32
    args = (jax.ShapeDtypeStruct((b, t, dim), jnp.float32), jax.ShapeDtypeStruct((v, dim), jnp.float32),
            jax.ShapeDtypeStruct((b, t), jnp.int32))

    def temp_bytes(stats):
        f = jax.jit(jax.value_and_grad(lambda h, w, y: -jnp.mean(stats(h, w, y)["logprob"]), argnums=(0, 1)))
        return f.lower(*args).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = b * t * v * 4
    naive = temp_bytes(lambda h, w, y: losses.naive_token_stats(h, w, y))
    chunked = temp_bytes(lambda h, w, y: losses.chunked_token_stats(h, w, y, chunk_size=64, vocab_chunk_size=512))
    assert naive >= logits_bytes
    assert chunked < logits_bytes / 4, (chunked, naive)


def test_near_certain_label_logprob_is_not_rounded_to_the_lse_grid():
    """A label with p = 1 - 3e-6 at logit ~30: its log-prob (-3e-6) must be accurate to well under OXA's UL
    epsilon (1e-6). Computed as z_y - lse in float32 it rounds to the grid of |lse| ~ 30 (steps of ~2e-6)."""
    v, d = 64, 4
    # hidden e_0, weight rows: the label's logit 30.1, one rival carrying 3e-6 of the mass, the rest negligible
    w = np.zeros((v, d), np.float32)
    w[:, 0] = -100.0
    w[5, 0] = 30.1
    w[40, 0] = 30.1 + np.log(3e-6)
    h = np.zeros((1, 1, d), np.float32)
    h[0, 0, 0] = 1.0
    y = np.array([[5]], np.int32)
    z = (h[0, 0].astype(np.float64) @ w.astype(np.float64).T)
    exact = np_log_softmax(z)[5]
    chunked = losses.chunked_token_stats(jnp.asarray(h), jnp.asarray(w), jnp.asarray(y), chunk_size=1,
                                         vocab_chunk_size=16)["logprob"][0, 0]
    full = losses.token_logprobs(jnp.asarray(z[None, None], jnp.float32), jnp.asarray(y))[0, 0]
    for got in (chunked, full):
        assert abs(float(got) - exact) < 2e-7, (float(got), exact)


@pytest.mark.parametrize("chunk,vtile", [(4, 8), (13, 37), (5, 10)])
def test_chunked_tempered_entropy_matches_float64_numpy(data, chunk, vtile):
    # GRPO logs the policy entropy at the rollout temperature: H(softmax(z / tau)), per token, tiled over V.
    z = np.einsum("btd,vd->btv", data["h"].astype(np.float64), data["w"].astype(np.float64))
    logq = np_log_softmax(z / data["tau"].astype(np.float64)[..., None])
    want = -(np.exp(logq) * logq).sum(-1)
    out = jax.jit(lambda h, w, y, t: losses.chunked_token_stats(h, w, y, chunk_size=chunk, vocab_chunk_size=vtile,
                                                                temperature=t))(
        data["h"], data["w"], data["y"], data["tau"])
    np.testing.assert_allclose(np.asarray(out["tempered_entropy"]), want, atol=2e-5)
    assert np.abs(want - (-(np.exp(np_log_softmax(z)) * np_log_softmax(z)).sum(-1))).max() > 1e-2  # tau matters
    naive = losses.naive_token_stats(jnp.asarray(data["h"]), jnp.asarray(data["w"]), data["y"], temperature=data["tau"])
    np.testing.assert_allclose(np.asarray(naive["tempered_entropy"]), want, atol=2e-5)


def test_chunked_head_structures_round_trip_as_pytrees():
    """Teacher / residual NamedTuples flatten and rebuild (absent parts stay None), also through jit."""
    from exploresft_jax.losses import token_stats as ts

    a = jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3)
    teacher = ts.Teacher(hidden=jnp.ones((2, 3, 4)), head_weight=jnp.ones((5, 4)), temperature=a)
    res = ts.Residuals(hidden=jnp.zeros((2, 3, 4)), head_weight=jnp.zeros((5, 4)), labels=jnp.zeros((2, 3), jnp.int32),
                       temperature=a, teacher=teacher, lse=a + 1, entropy=a + 2, tempered_lse=None,
                       teacher_lse=a + 3, reverse_kl=a + 4)
    leaves, treedef = jax.tree.flatten(res)
    assert len(leaves) == 11  # 4 inputs + 3 teacher + lse, entropy, teacher_lse, reverse_kl
    for back in (jax.tree.unflatten(treedef, leaves), jax.jit(lambda r: r)(res)):
        assert isinstance(back, ts.Residuals) and isinstance(back.teacher, ts.Teacher)
        assert back.tempered_lse is None
        np.testing.assert_array_equal(back.teacher.temperature, a)
        np.testing.assert_array_equal(back.reverse_kl, a + 4)
        assert back.labels.dtype == jnp.int32


def test_streaming_softmax_state_matches_full_vocabulary():
    """Tile-by-tile SoftmaxState gives the full-row log-sum-exp and entropy; block_start clamps the last block."""
    from exploresft_jax.losses import token_stats as ts

    assert [int(ts.block_start(i, 5, 13)) for i in range(3)] == [0, 5, 8]
    z = np.random.default_rng(3).normal(size=(2, 3, 12)).astype(np.float32) * 4
    state = ts.SoftmaxState.init((2, 3))
    valid = jnp.ones((1, 1, 4), bool)
    for j in range(3):
        state, _, _ = ts._online(state, jnp.asarray(z[..., 4 * j:4 * j + 4]), valid)
    logq = np_log_softmax(z.astype(np.float64))
    np.testing.assert_allclose(state.running_max + state.log_sum(), np.log(np.exp(z.astype(np.float64)).sum(-1)),
                               atol=1e-5)
    np.testing.assert_allclose(state.entropy(), -(np.exp(logq) * logq).sum(-1), atol=1e-5)
