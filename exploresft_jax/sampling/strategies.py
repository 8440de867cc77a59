"""Sampling strategies: one frozen, hashable `SamplingConfig` (a static jit argument) and the pure functions
that turn a row of logits into a sampled token, its log-probability and the distribution's entropy.

Order of the logit transforms (the transformers `generate` order): temperature, then top-k, then top-p on
what top-k kept (renormalised), then min-p (relative to the most likely token, which no earlier step removes).
A token whose probability ties with the truncation threshold is kept, so the kept set can exceed `top_k` by
exact ties only.

Log-probabilities and entropies always refer to the temperature-scaled *full-vocabulary* distribution
`softmax(logits / temperature)` (with temperature 1 for greedy): this is the quantity a trainer recomputes from
the same tokens (`losses.chunked_token_stats(..., temperature=t)["tempered_logprob"]`), whatever truncation
was used to draw the token.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_F32 = jnp.float32
_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to draw the next token.

    temperature: 0 means greedy (argmax; log-probs and entropy then use temperature 1); otherwise > 0.
    top_k: keep the k most likely tokens (0 = off).
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1 = off).
    min_p: keep tokens with probability >= min_p * (probability of the most likely token) (0 = off).
    Combinations apply in the order temperature, top-k, top-p, min-p.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p={self.min_p} must be in [0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def scale_temperature(self) -> float:
        """The temperature that log-probs and entropies refer to (1 for greedy)."""
        return 1.0 if self.greedy else float(self.temperature)


# Named constructors, so call sites read like the strategy they use; all return a SamplingConfig.
def Greedy() -> SamplingConfig:  # noqa: N802 (reads as a type at call sites)
    return SamplingConfig(temperature=0.0)


def Temperature(temperature: float) -> SamplingConfig:  # noqa: N802
    return SamplingConfig(temperature=temperature)


def TopK(k: int, temperature: float = 1.0) -> SamplingConfig:  # noqa: N802
    return SamplingConfig(temperature=temperature, top_k=k)


def TopP(p: float, temperature: float = 1.0, top_k: int = 0) -> SamplingConfig:  # noqa: N802
    return SamplingConfig(temperature=temperature, top_p=p, top_k=top_k)


def MinP(p: float, temperature: float = 1.0) -> SamplingConfig:  # noqa: N802
    return SamplingConfig(temperature=temperature, min_p=p)


def truncated_logits(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Temperature-scaled logits with the tokens outside the kept set at -inf.

    logits: [B, V] float32 raw logits. Returns [B, V] float32 (`logits / temperature`, -inf where cut).
    For a greedy config the logits come back unchanged.
    """
    z = logits.astype(_F32) / cfg.scale_temperature
    if cfg.greedy:
        return z
    vocab = z.shape[-1]
    sorted_desc = None  # descending values of the kept candidates, when known
    if 0 < cfg.top_k < vocab:
        sorted_desc, _ = jax.lax.top_k(z, cfg.top_k)  # [B, k], descending
        z = jnp.where(z >= sorted_desc[:, -1:], z, _NEG_INF)
    if cfg.top_p < 1.0:
        if sorted_desc is None:
            # Only the values are sorted (no argsort): the cut is a threshold on the value itself.
            sorted_desc = -jnp.sort(-z, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # keep every token whose preceding mass is below top_p: the smallest prefix reaching top_p
        n_keep = jnp.maximum(jnp.sum(mass_before < cfg.top_p, axis=-1, keepdims=True), 1)
        threshold = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)
        z = jnp.where(z >= threshold, z, _NEG_INF)
    if cfg.min_p > 0.0:
        zmax = jnp.max(z, axis=-1, keepdims=True)
        z = jnp.where(z - zmax >= jnp.log(jnp.float32(cfg.min_p)), z, _NEG_INF)
    return z


def sample_tokens(logits: jax.Array, keys: jax.Array, cfg: SamplingConfig):
    """Draws one token per row.

    logits: [B, V] float32 raw logits; keys: [B] typed PRNG keys (one per row, already specific to this step,
    so a row's draw does not depend on which other rows share the batch).
    Returns (tokens [B] int32, logprob [B] float32, entropy [B] float32): the log-probability of the chosen
    token and the entropy (nats) of the temperature-scaled full distribution (see the module docstring).
    """
    z = logits.astype(_F32)
    scaled = z / cfg.scale_temperature
    top = jnp.max(scaled, axis=-1, keepdims=True)
    if cfg.greedy:
        tokens = first_argmax(z, top)
    else:
        cut = truncated_logits(z, cfg)
        # Gumbel-max: argmax(cut + Gumbel noise) is a draw from softmax(cut); -inf entries are never chosen.
        noise = jax.vmap(lambda k: jax.random.gumbel(k, (z.shape[-1],), _F32))(keys)
        tokens = first_argmax(cut + noise)
    # log-softmax statistics with one exp over the vocabulary: with d = scaled - max, e = exp(d), s = sum(e),
    # log p = d - log s and entropy = -sum(p log p) = log s - sum(e d) / s (a -inf logit adds nothing)
    d = scaled - top
    e = jnp.exp(d)
    s = jnp.sum(e, axis=-1)
    log_s = jnp.log(s)
    token_logp = jnp.take_along_axis(d, tokens[:, None], axis=-1)[:, 0] - log_s
    entropy = log_s - jnp.sum(jnp.where(e > 0, e * d, 0.0), axis=-1) / s
    return tokens, token_logp, entropy


def first_argmax(x: jax.Array, top: jax.Array | None = None) -> jax.Array:
    """[B] int32: the first index of each row's maximum of x [B, V] (as `jnp.argmax`); top: x's row maxima
    [B, 1] when already known. Written as a max and a min of indices because XLA's CPU compiler runs argmax's
    paired (value, index) reduction several times slower than two plain reductions, and a batch-1 decode step
    does it over the whole vocabulary. A row without a maximum (NaN) gives the last index."""
    if top is None:
        top = jnp.max(x, axis=-1, keepdims=True)
    vocab = x.shape[-1]
    first = jnp.min(jnp.where(x == top, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)
    return jnp.minimum(first, vocab - 1)


def kept_probabilities(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """The distribution a config actually samples from: softmax of `truncated_logits`. [B, V] float32.

    A reference for tests and diagnostics (greedy gives a one-hot on the argmax).
    """
    if cfg.greedy:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=_F32)
    return jax.nn.softmax(truncated_logits(logits, cfg), axis=-1)
