"""Sampling strategies: empirical token frequencies on a fixed logits vector match the truncated distribution
(chi-square), computed here independently in numpy; log-probs refer to the temperature-scaled full softmax."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from exploresft_jax.sampling import Greedy, MinP, SamplingConfig, Temperature, TopK, TopP, sample_tokens

DRAWS = 20000
LOGITS = np.random.default_rng(42).normal(0.0, 1.5, 24).astype(np.float32)


def reference_probs(logits: np.ndarray, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> np.ndarray:
    """The kept, renormalised distribution, by the textbook definitions (float64, explicit sorting)."""
    z = logits.astype(np.float64) / temperature
    keep = np.ones(z.shape, bool)
    order = np.argsort(-z, kind="stable")
    if top_k:
        keep[:] = False
        keep[order[:top_k]] = True
    if top_p < 1.0:
        p = np.where(keep, np.exp(z - z.max()), 0.0)
        p /= p.sum()
        mass, chosen = 0.0, np.zeros_like(keep)
        for i in order:
            if not keep[i] or mass >= top_p:
                continue
            chosen[i] = True
            mass += p[i]
        keep = chosen
    if min_p > 0.0:
        p = np.exp(z - z.max())  # relative to the top token, which no step removes
        keep &= p >= min_p
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    return p / p.sum()


@functools.partial(jax.jit, static_argnames=("cfg",))
def _draw(logits, cfg):
    keys = jax.random.split(jax.random.key(0), DRAWS)
    return sample_tokens(jnp.broadcast_to(logits, (DRAWS, logits.shape[0])), keys, cfg)


CONFIGS = {
    "temperature": (Temperature(0.8), dict(temperature=0.8)),
    "top_k": (TopK(5), dict(top_k=5)),
    "top_p": (TopP(0.8, temperature=0.7), dict(temperature=0.7, top_p=0.8)),
    "min_p": (MinP(0.15), dict(min_p=0.15)),
    "top_k+top_p+min_p": (SamplingConfig(temperature=1.3, top_k=10, top_p=0.9, min_p=0.05),
                          dict(temperature=1.3, top_k=10, top_p=0.9, min_p=0.05)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_frequencies_match_truncated_distribution(name):
    cfg, kw = CONFIGS[name]
    expected = reference_probs(LOGITS, **kw)
    tokens, logp, entropy = jax.device_get(_draw(jnp.asarray(LOGITS), cfg))
    counts = np.bincount(tokens, minlength=LOGITS.size)
    support = expected > 0
    assert counts[~support].sum() == 0, "a token outside the kept set was drawn"
    assert 1 < support.sum() < LOGITS.size or name == "temperature"
    chi2 = stats.chisquare(counts[support], DRAWS * expected[support])
    assert chi2.pvalue > 1e-3, (name, chi2)
    # log-prob and entropy: the temperature-scaled full distribution, whatever the truncation
    t = kw.get("temperature", 1.0)
    full = np.log(reference_probs(LOGITS, temperature=t))
    np.testing.assert_allclose(logp, full[tokens], atol=1e-5)
    np.testing.assert_allclose(entropy, -(np.exp(full) * full).sum(), atol=1e-5)


def test_chi_square_detects_a_wrong_distribution():
    """The frequency test has power: top-p draws do not fit the untruncated distribution."""
    tokens, _, _ = jax.device_get(_draw(jnp.asarray(LOGITS), TopP(0.8, temperature=0.7)))
    counts = np.bincount(tokens, minlength=LOGITS.size)
    wrong = reference_probs(LOGITS, temperature=0.7)
    assert stats.chisquare(counts, DRAWS * wrong).pvalue < 1e-6


def test_greedy_is_argmax_with_untempered_logprob():
    tokens, logp, _ = jax.device_get(_draw(jnp.asarray(LOGITS), Greedy()))
    assert (tokens == np.argmax(LOGITS)).all()
    np.testing.assert_allclose(logp, np.log(reference_probs(LOGITS))[np.argmax(LOGITS)], atol=1e-6)


def test_first_argmax_ties_and_nan():
    """The first index of a tied maximum (as numpy's argmax), per row; a NaN row gives an index in range."""
    from exploresft_jax.sampling.strategies import first_argmax

    x = np.array([[1.0, 3.0, 3.0, -2.0], [-np.inf, -1.0, -np.inf, -1.0], [np.nan, 0.0, 1.0, 0.0]], np.float32)
    got = np.asarray(first_argmax(jnp.asarray(x)))
    assert got[:2].tolist() == np.argmax(x[:2], axis=-1).tolist() == [1, 1]
    assert 0 <= got[2] < x.shape[1]


def test_statistics_with_masked_vocabulary_entries():
    """Logits of -inf (a masked vocabulary entry) carry no probability: the entropy and log-probs are those of
    the remaining entries (float64 reference), not NaN, for greedy and sampled draws."""
    z = np.random.default_rng(7).normal(0.0, 2.0, 16)
    z[[3, 9]] = -np.inf
    keep = np.isfinite(z)
    for cfg, t in ((Greedy(), 1.0), (Temperature(0.7), 0.7)):
        tok, logp, ent = jax.device_get(sample_tokens(jnp.asarray(z[None], jnp.float32),
                                                      jax.random.split(jax.random.key(1), 1), cfg))
        zs = z[keep] / t
        ref_logp = zs - zs.max() - np.log(np.exp(zs - zs.max()).sum())
        assert keep[tok[0]]
        np.testing.assert_allclose(ent[0], -(np.exp(ref_logp) * ref_logp).sum(), rtol=1e-5)
        np.testing.assert_allclose(logp[0], ref_logp[np.flatnonzero(keep).tolist().index(tok[0])], atol=1e-5)
