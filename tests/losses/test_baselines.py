"""Baselines (entropy-regularised SFT, DFT, GEM, label smoothing) against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exploresft_jax import losses

B, T, V = 2, 8, 13


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(11)
    z = (1.5 * rng.normal(size=(B, T, V))).astype(np.float32)
    y = rng.integers(0, V, size=(B, T)).astype(np.int32)
    m = np.ones((B, T), np.float32)
    m[1, 6:] = 0
    z64 = z.astype(np.float64)
    logp = np_log_softmax(z64)
    p = np.exp(logp)
    onehot = np.eye(V)[y]
    return dict(z=z, y=y, m=m, logp=logp, p=p, onehot=onehot, lp=(logp * onehot).sum(-1),
                H=-(p * logp).sum(-1))


def _vg(fn):
    return jax.jit(jax.value_and_grad(lambda z: fn(z)[0]))


@pytest.mark.parametrize("frac", [1.0, 0.25])
def test_entropy_regularized(batch, frac):
    d = batch
    loss, g = _vg(lambda z: losses.entropy_regularized_sft_loss(z, d["y"], d["m"], coef=0.3, top_fraction=frac))(d["z"])
    n = d["m"].sum()
    if frac == 1.0:
        sel = d["m"]
    else:
        k = int(np.ceil(frac * n))
        thr = np.sort(d["H"][d["m"] > 0])[::-1][k - 1]
        sel = ((d["H"] >= thr) & (d["m"] > 0)).astype(np.float64)
        assert sel.sum() == k
    ref = -(d["lp"] * d["m"]).sum() / n - 0.3 * (d["H"] * sel).sum() / sel.sum()
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    dH = -d["p"] * (d["logp"] + d["H"][..., None])
    ref_g = (d["m"] / n)[..., None] * (d["p"] - d["onehot"]) - 0.3 * (sel / sel.sum())[..., None] * dH
    np.testing.assert_allclose(g, ref_g, atol=1e-6)


def test_dft(batch):
    d = batch
    loss, g = _vg(lambda z: losses.dft_loss(z, d["y"], d["m"]))(d["z"])
    n = d["m"].sum()
    py = np.exp(d["lp"])
    np.testing.assert_allclose(loss, -(py * d["lp"] * d["m"]).sum() / n, rtol=1e-5)
    np.testing.assert_allclose(g, (-py * d["m"] / n)[..., None] * (d["onehot"] - d["p"]), atol=1e-6)


def test_gem_linear(batch):
    d = batch
    loss, g = _vg(lambda z: losses.gem_loss(z, d["y"], d["m"], beta=0.7))(d["z"])
    n = d["m"].sum()
    q = np.exp(np_log_softmax(d["z"].astype(np.float64) / 0.7))
    per = -(d["lp"] - (q * d["logp"]).sum(-1))
    np.testing.assert_allclose(loss, (per * d["m"]).sum() / n, rtol=1e-5)
    np.testing.assert_allclose(g, (d["m"] / n)[..., None] * (q - d["onehot"]), atol=1e-6)


def test_label_smoothing(batch):
    d = batch
    loss, g = _vg(lambda z: losses.label_smoothing_loss(z, d["y"], d["m"], smoothing=0.1))(d["z"])
    n = d["m"].sum()
    per = -0.9 * d["lp"] - 0.1 * d["logp"].mean(-1)
    np.testing.assert_allclose(loss, (per * d["m"]).sum() / n, rtol=1e-5)
    ref_g = (d["m"] / n)[..., None] * (0.9 * (d["p"] - d["onehot"]) + 0.1 * (d["p"] - 1.0 / V))
    np.testing.assert_allclose(g, ref_g, atol=1e-6)


def test_from_stats_forms_match_chunked_head(batch):
    """The per-token forms fed by the chunked head give the logits-based losses and gradients."""
    rng = np.random.default_rng(12)
    h = rng.normal(size=(B, T, 8)).astype(np.float32)
    w = rng.normal(size=(V, 8)).astype(np.float32)
    y, m = batch["y"], batch["m"]

    def via_logits(h, w):
        z = jnp.einsum("btd,vd->btv", h, w)
        return losses.entropy_regularized_sft_loss(z, y, m, coef=0.2)[0] + losses.dft_loss(z, y, m)[0]

    def via_chunks(h, w):
        st = losses.chunked_token_stats(h, w, y, chunk_size=3, vocab_chunk_size=5)
        return (losses.entropy_regularized_sft_loss_from_stats(st["logprob"], st["entropy"], m, coef=0.2)[0]
                + losses.dft_loss_from_logprobs(st["logprob"], m)[0])

    a = jax.jit(jax.value_and_grad(via_logits, argnums=(0, 1)))(h, w)
    b = jax.jit(jax.value_and_grad(via_chunks, argnums=(0, 1)))(h, w)
    for x, z in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(z, x, rtol=1e-4, atol=1e-5)
