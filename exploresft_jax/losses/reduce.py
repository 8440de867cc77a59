"""Exact, nan-free reductions shared by every loss: masked sums with their counts, and a division that treats
an empty denominator as 0 (an empty micro-batch, or a step without UL examples, contributes nothing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def masked_sum_and_count(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sum(values * mask), sum(mask))`` as float32 scalars.  values, mask: same shape (mask 0/1 or weights)."""
    m = mask.astype(_F32)
    return jnp.sum(values.astype(_F32) * m), jnp.sum(m)


def safe_divide(num: jax.Array, den) -> jax.Array:
    """``num / den`` with an empty denominator giving 0 instead of nan."""
    den = jnp.asarray(den, _F32)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
