"""Per-token statistics of a language-model head: label log-probabilities and entropies.

Two families of functions live here:

* ``token_logprobs`` / ``token_entropy`` take materialised logits ``[B, T, V]``.
* ``chunked_token_stats`` takes the final hidden states ``[B, T, D]`` and the head weight ``[V, D]`` and
  never builds the ``[B, T, V]`` logits.  It walks the sequence in chunks of ``chunk_size`` positions and the
  vocabulary in tiles of ``vocab_chunk_size`` rows, keeping an online (streaming) log-sum-exp and entropy.
  Its backward pass is a custom VJP that recomputes every ``[B, chunk, vocab_tile]`` block of logits and
  writes the head-weight gradient tile by tile, so the only ``V``-sized buffer it touches is the gradient
  output itself.

All softmax arithmetic is float32 whatever the input dtype.  Units: natural log (nats).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

_F32 = jnp.float32
# Finite stand-in for -inf as the initial running max: keeps (m_old - m_new) * 0 equal to 0 instead of nan.
_NEG_BIG = -1e30


def token_logprobs(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Log-probability of each label under ``softmax(logits)``.

    Args:
      logits: ``[..., V]`` any float dtype; cast to float32 before the softmax.
      labels: ``[...]`` integer token ids in ``[0, V)`` (``logits[b, t]`` scores ``labels[b, t]``).

    Returns:
      ``[...]`` float32 log-probabilities (nats, <= 0).
    """
    z = logits.astype(_F32)
    lse = jax.nn.logsumexp(z, axis=-1)
    z_y = jnp.take_along_axis(z, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return z_y - lse


def token_entropy(logits: jax.Array) -> jax.Array:
    """Shannon entropy of ``softmax(logits)`` at each position.

    Args:
      logits: ``[..., V]`` any float dtype; cast to float32.

    Returns:
      ``[...]`` float32 entropy in nats, ``0 <= H <= log V``.
    """
    logp = jax.nn.log_softmax(logits.astype(_F32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


# ---------------------------------------------------------------------------------------------------------
# Chunked head.
#
# Chunks that do not divide T (or tiles that do not divide V) are handled by clamping the last block's start
# to ``size - block`` so that every block has the same static shape (one traced body, no padded copies of
# the activations or of the [V, D] weight).  The positions the clamped block shares with the previous block
# are masked out wherever they would otherwise be counted twice.


def _block_start(i, block: int, size: int):
    """Start of block ``i`` clamped so that the block lies inside ``[0, size)``."""
    return jnp.minimum(i * block, size - block)


def _fwd_stats(hidden, head_weight, labels, tau, chunk: int, vtile: int, tempered: bool):
    """Streaming label log-prob, log-sum-exp and entropy.  Shapes: hidden [B,T,D], weight [V,D],
    labels [B,T] int32, tau [B,T] float32.  Returns a dict of [B,T] float32 arrays."""
    bsz, seq, _ = hidden.shape
    vocab = head_weight.shape[0]
    n_seq = -(-seq // chunk)
    n_voc = -(-vocab // vtile)

    def seq_body(i, bufs):
        start = _block_start(i, chunk, seq)
        h = lax.dynamic_slice_in_dim(hidden, start, chunk, axis=1)  # [B,c,D]
        y = lax.dynamic_slice_in_dim(labels, start, chunk, axis=1)  # [B,c]
        inv_tau = 1.0 / lax.dynamic_slice_in_dim(tau, start, chunk, axis=1)  # [B,c]

        def voc_body(j, acc):
            vstart = _block_start(j, vtile, vocab)
            w = lax.dynamic_slice_in_dim(head_weight, vstart, vtile, axis=0)  # [vt,D]
            z = jnp.einsum("bcd,vd->bcv", h, w, preferred_element_type=_F32)
            cols = vstart + jnp.arange(vtile, dtype=jnp.int32)
            valid = (cols >= j * vtile)[None, None, :]  # columns already seen by the previous tile are out
            hit = valid & (cols[None, None, :] == y[..., None])
            out = dict(acc)
            out["zy"] = acc["zy"] + jnp.sum(jnp.where(hit, z, 0.0), axis=-1)

            def online(m, s, u, zz):
                # Running max m, sum s = sum exp(z - m), centred first moment u = sum exp(z - m) (z - m).
                m_new = jnp.maximum(m, jnp.max(jnp.where(valid, zz, -jnp.inf), axis=-1))
                d = zz - m_new[..., None]
                e = jnp.where(valid, jnp.exp(d), 0.0)
                alpha = jnp.exp(m - m_new)
                s_new = alpha * s + jnp.sum(e, axis=-1)
                u_new = None
                if u is not None:
                    u_new = alpha * (u + (m - m_new) * s) + jnp.sum(jnp.where(valid, e * d, 0.0), axis=-1)
                return m_new, s_new, u_new

            out["m"], out["s"], out["u"] = online(acc["m"], acc["s"], acc["u"], z)
            if tempered:
                out["tm"], out["ts"], _ = online(acc["tm"], acc["ts"], None, z * inv_tau[..., None])
            return out

        zeros = jnp.zeros((bsz, chunk), _F32)
        acc0 = {"m": jnp.full((bsz, chunk), _NEG_BIG, _F32), "s": zeros, "u": zeros, "zy": zeros}
        if tempered:
            acc0["tm"] = jnp.full((bsz, chunk), _NEG_BIG, _F32)
            acc0["ts"] = zeros
        acc = lax.fori_loop(0, n_voc, voc_body, acc0)
        log_s = jnp.log(acc["s"])
        lse = acc["m"] + log_s
        new = {"logprob": acc["zy"] - lse, "entropy": log_s - acc["u"] / acc["s"], "lse": lse}
        if tempered:
            tlse = acc["tm"] + jnp.log(acc["ts"])
            new["tempered_logprob"] = acc["zy"] * inv_tau - tlse
            new["tempered_lse"] = tlse
        # Overlapping positions of a clamped last chunk are recomputed to identical values: plain overwrite.
        return {k: lax.dynamic_update_slice_in_dim(bufs[k], new[k], start, axis=1) for k in bufs}

    names = ["logprob", "entropy", "lse"] + (["tempered_logprob", "tempered_lse"] if tempered else [])
    bufs0 = {k: jnp.zeros((bsz, seq), _F32) for k in names}
    return lax.fori_loop(0, n_seq, seq_body, bufs0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunked_core(hidden, head_weight, labels, tau, chunk, vtile, tempered):
    out = _fwd_stats(hidden, head_weight, labels, tau, chunk, vtile, tempered)
    return _public(out, tempered)


def _public(out, tempered):
    keys = ["logprob", "entropy"] + (["tempered_logprob"] if tempered else [])
    return {k: out[k] for k in keys}


def _core_fwd(hidden, head_weight, labels, tau, chunk, vtile, tempered):
    # symbolic_zeros=True wraps the differentiable primals; unwrap them.
    hidden, head_weight, labels, tau = (x.value for x in (hidden, head_weight, labels, tau))
    out = _fwd_stats(hidden, head_weight, labels, tau, chunk, vtile, tempered)
    res = (hidden, head_weight, labels, tau, out["lse"], out["entropy"], out.get("tempered_lse"))
    return _public(out, tempered), res


def _core_bwd(chunk, vtile, tempered, res, g):
    hidden, head_weight, labels, tau, lse, ent, tlse = res
    bsz, seq, dim = hidden.shape
    vocab = head_weight.shape[0]
    n_seq = -(-seq // chunk)
    n_voc = -(-vocab // vtile)
    # Outputs the caller does not differentiate arrive as symbolic zeros: their terms are skipped entirely
    # (a plain cross-entropy then costs no entropy or tempered-softmax work in the backward pass).
    def used(name):
        return name in g and not isinstance(g[name], SymbolicZero)

    g_lp = g["logprob"].astype(_F32) if used("logprob") else None
    g_ent = g["entropy"].astype(_F32) if used("entropy") else None
    g_tlp = g["tempered_logprob"].astype(_F32) if used("tempered_logprob") else None
    # The logit cotangent is cast to the activation dtype before the two matmuls, as autodiff of a
    # bf16 x bf16 -> f32 einsum would do; accumulation stays float32.
    mm_dtype = jnp.promote_types(hidden.dtype, head_weight.dtype)

    def voc_body(j, carry):
        dh, dw = carry
        vstart = _block_start(j, vtile, vocab)
        w = lax.dynamic_slice_in_dim(head_weight, vstart, vtile, axis=0)  # [vt,D]
        cols = vstart + jnp.arange(vtile, dtype=jnp.int32)
        vvalid = cols >= j * vtile

        def seq_body(i, carry2):
            dh, dwt = carry2
            start = _block_start(i, chunk, seq)
            sl = functools.partial(lax.dynamic_slice_in_dim, start_index=start, slice_size=chunk, axis=1)
            h, y = sl(hidden), sl(labels)
            z = jnp.einsum("bcd,vd->bcv", h, w, preferred_element_type=_F32)
            onehot = (cols[None, None, :] == y[..., None]).astype(_F32)
            dz = jnp.zeros(z.shape, _F32)
            if g_lp is not None or g_ent is not None:
                logp = z - sl(lse)[..., None]
                p = jnp.exp(logp)
                if g_lp is not None:
                    dz = dz + sl(g_lp)[..., None] * (onehot - p)
                if g_ent is not None:
                    dz = dz - sl(g_ent)[..., None] * p * (logp + sl(ent)[..., None])
            if g_tlp is not None:
                inv_tau = 1.0 / sl(tau)
                q = jnp.exp(z * inv_tau[..., None] - sl(tlse)[..., None])
                dz = dz + (sl(g_tlp) * inv_tau)[..., None] * (onehot - q)
            tvalid = (start + jnp.arange(chunk)) >= i * chunk  # positions owned by this chunk
            dz = jnp.where(tvalid[None, :, None] & vvalid[None, None, :], dz, 0.0).astype(mm_dtype)
            dh_c = jnp.einsum("bcv,vd->bcd", dz, w.astype(mm_dtype), preferred_element_type=_F32)
            dh = lax.dynamic_update_slice_in_dim(dh, sl(dh) + dh_c, start, axis=1)
            dwt = dwt + jnp.einsum("bcv,bcd->vd", dz, h.astype(mm_dtype), preferred_element_type=_F32)
            return dh, dwt

        dh, dwt = lax.fori_loop(0, n_seq, seq_body, (dh, jnp.zeros((vtile, dim), _F32)))
        # Each vocabulary row is finished after one pass over the sequence: write it once, in place.
        old = lax.dynamic_slice_in_dim(dw, vstart, vtile, axis=0)
        dw = lax.dynamic_update_slice_in_dim(dw, jnp.where(vvalid[:, None], dwt.astype(dw.dtype), old), vstart, 0)
        return dh, dw

    dh0 = jnp.zeros((bsz, seq, dim), _F32)
    dw0 = jnp.zeros(head_weight.shape, head_weight.dtype)
    dh, dw = lax.fori_loop(0, n_voc, voc_body, (dh0, dw0))
    return dh.astype(hidden.dtype), dw, None, jnp.zeros_like(tau)


_chunked_core.defvjp(_core_fwd, _core_bwd, symbolic_zeros=True)


def chunked_token_stats(
    hidden: jax.Array,
    head_weight: jax.Array,
    labels: jax.Array,
    *,
    chunk_size: int,
    temperature: Any = None,
    vocab_chunk_size: int = 8192,
) -> dict[str, jax.Array]:
    """Label log-probs and entropies of ``softmax(hidden @ head_weight.T)`` without the ``[B,T,V]`` logits.

    ``logits[b, t, v] = sum_d hidden[b, t, d] * head_weight[v, d]`` with float32 accumulation; all softmax
    statistics are float32.  The sequence is processed ``chunk_size`` positions at a time and the vocabulary
    ``vocab_chunk_size`` rows at a time, so the largest live block is ``[B, chunk_size, vocab_chunk_size]``
    float32.  Neither size has to divide ``T`` or ``V``.  Differentiable (reverse mode) in ``hidden`` and
    ``head_weight`` through a custom VJP that recomputes each block; usable forward-only under ``jit``.

    Args:
      hidden: ``[B, T, D]`` final hidden states (bfloat16 or float32).
      head_weight: ``[V, D]`` output-embedding matrix (the HuggingFace ``lm_head.weight`` / tied embedding
        layout).
      labels: ``[B, T]`` integer ids scored at each position (already shifted).  Ids outside ``[0, V)`` give
        ``logprob = -logsumexp`` (treat them as masked).
      chunk_size: positions per sequence chunk (static Python int; clipped to ``T``).
      temperature: ``None``, a Python/array scalar, or a ``[B, T]`` array of per-token temperatures (> 0).
        Treated as a constant: no gradient flows into it.
      vocab_chunk_size: vocabulary rows per tile (static; clipped to ``V``).

    Returns:
      dict of ``[B, T]`` float32 arrays:
        ``"logprob"``: ``log softmax(z)[label]`` (nats);
        ``"entropy"``: ``-sum_v p_v log p_v`` of ``softmax(z)`` (nats);
        ``"tempered_logprob"`` (only when ``temperature`` is given): ``log softmax(z / temperature)[label]``.
    """
    if hidden.ndim != 3 or head_weight.ndim != 2 or hidden.shape[-1] != head_weight.shape[-1]:
        raise ValueError(f"expected hidden [B,T,D] and head_weight [V,D], got {hidden.shape}, {head_weight.shape}")
    bsz, seq, _ = hidden.shape
    chunk = max(1, min(int(chunk_size), seq))
    vtile = max(1, min(int(vocab_chunk_size), head_weight.shape[0]))
    tempered = temperature is not None
    tau = jnp.broadcast_to(jnp.asarray(1.0 if temperature is None else temperature, _F32), (bsz, seq))
    tau = lax.stop_gradient(tau)
    return _chunked_core(hidden, head_weight, labels.astype(jnp.int32), tau, chunk, vtile, tempered)


def naive_token_stats(hidden: jax.Array, head_weight: jax.Array, labels: jax.Array, *, temperature: Any = None):
    """Reference for :func:`chunked_token_stats` that materialises the full ``[B, T, V]`` float32 logits.

    Same arguments (minus the block sizes) and same outputs; meant for small shapes, tests and benchmarks.
    """
    z = jnp.einsum("btd,vd->btv", hidden, head_weight, preferred_element_type=_F32)
    out = {"logprob": token_logprobs(z, labels), "entropy": token_entropy(z)}
    if temperature is not None:
        tau = lax.stop_gradient(jnp.broadcast_to(jnp.asarray(temperature, _F32), labels.shape))
        out["tempered_logprob"] = token_logprobs(z / tau[..., None], labels)
    return out
