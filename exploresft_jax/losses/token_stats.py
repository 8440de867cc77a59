"""Per-token statistics of a language-model head: label log-probabilities and entropies.

Two families of functions live here:

* ``token_logprobs`` / ``token_entropy`` take materialised logits ``[B, T, V]``.
* ``chunked_token_stats`` takes the final hidden states ``[B, T, D]`` and the head weight ``[V, D]`` and
  never builds the ``[B, T, V]`` logits.  It walks the sequence in chunks of ``chunk_size`` positions and the
  vocabulary in tiles of ``vocab_chunk_size`` rows, keeping an online (streaming) log-sum-exp and entropy.
  Its backward pass is a custom VJP that recomputes every ``[B, chunk, vocab_tile]`` block of logits and
  writes the head-weight gradient tile by tile, so the only ``V``-sized buffer it touches is the gradient
  output itself.

Cost: the forward pass runs one head-sized matmul; the backward pass recomputes the logits block by block
and runs the two gradient matmuls, so a training step does four head-sized matmuls where autodiff through
full logits does three.  Memory (``scripts/bench/loss_memory.py``): with float32 inputs the temporaries are
a few ``[B, chunk, vocab_tile]`` blocks plus the float32 ``[B, T, D]`` hidden-state gradient accumulator.  With
a bfloat16 head weight, XLA's CPU backend adds a float32 ``[V, D]`` copy of the weight (it has no native bf16
matmul), which then dominates the temporaries on CPU.

All softmax arithmetic is float32 whatever the input dtype.  Units: natural log (nats).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

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
    m = lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    log_s = jnp.log(jnp.sum(jnp.exp(z - m), axis=-1))
    z_y = jnp.take_along_axis(z, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return (z_y - m[..., 0]) - log_s  # exact for near-certain tokens (see _fwd_stats)


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


def block_start(i, block: int, size: int):
    """Start of block ``i`` clamped so that the block lies inside ``[0, size)``."""
    return jnp.minimum(i * block, size - block)


class Teacher(NamedTuple):
    """The constant teacher of :func:`chunked_token_stats` (no gradient flows into it).

    hidden: ``[B, T, D]`` teacher final hidden states (bfloat16 or float32).
    head_weight: ``[V, D]`` teacher head weight.
    temperature: ``[B, T]`` float32 teacher temperature (> 0); the teacher logits are divided by it.
    """

    hidden: jax.Array
    head_weight: jax.Array
    temperature: jax.Array


class SoftmaxState(NamedTuple):
    """Streaming softmax over vocabulary tiles, per position; every field ``[B, chunk]`` float32.

    running_max: ``m``, the largest logit seen so far (starts at ``_NEG_BIG``).
    running_sum: ``s = sum_v exp(z_v - m)``.
    centred_moment: ``u = sum_v exp(z_v - m) (z_v - m)``; the entropy is ``log s - u / s``.
    """

    running_max: jax.Array
    running_sum: jax.Array
    centred_moment: jax.Array

    @classmethod
    def init(cls, shape) -> SoftmaxState:
        zeros = jnp.zeros(shape, _F32)
        return cls(jnp.full(shape, _NEG_BIG, _F32), zeros, zeros)

    def log_sum(self) -> jax.Array:
        return jnp.log(self.running_sum)

    def entropy(self) -> jax.Array:
        return self.log_sum() - self.centred_moment / self.running_sum


class TeacherScan(NamedTuple):
    """Teacher part of the vocabulary scan; every field ``[B, chunk]`` float32.

    softmax: streaming softmax of the tempered teacher logits ``zt = teacher_logits / teacher_temperature``.
    label_logit: ``zt`` at the label.
    teacher_weighted_logit: ``sum_v exp(zt_v - softmax.running_max) z_v`` (student logits ``z``; with
      ``softmax.running_sum`` it gives ``E_q[z]``).
    student_weighted_teacher_logit: ``sum_v exp(z_v - student running_max) zt_v`` (gives ``E_p[zt]``).
    """

    softmax: SoftmaxState
    label_logit: jax.Array
    teacher_weighted_logit: jax.Array
    student_weighted_teacher_logit: jax.Array


class VocabScan(NamedTuple):
    """Carry of the vocabulary loop of one sequence chunk; arrays ``[B, chunk]`` float32.

    student: streaming softmax of the student logits ``z``.
    label_logit: ``z`` at the label (0 for labels outside ``[0, V)``).
    tempered: streaming softmax of ``z / temperature`` (``None`` without a temperature).
    teacher: the teacher terms (``None`` without a teacher).
    """

    student: SoftmaxState
    label_logit: jax.Array
    tempered: SoftmaxState | None
    teacher: TeacherScan | None


class Residuals(NamedTuple):
    """What the forward pass of the chunked head saves for its backward pass.

    hidden: ``[B, T, D]``; head_weight: ``[V, D]``; labels: ``[B, T]`` int32; temperature: ``[B, T]`` float32.
    teacher: :class:`Teacher` or ``None``.
    lse: ``[B, T]`` float32 student log-sum-exp; entropy: ``[B, T]`` float32 student entropy.
    tempered_lse: ``[B, T]`` float32 log-sum-exp of ``z / temperature`` (``None`` without a temperature).
    teacher_lse: ``[B, T]`` float32 log-sum-exp of the tempered teacher logits; reverse_kl: ``[B, T]``
      float32 ``KL(p || q)`` (both ``None`` without a teacher).
    """

    hidden: jax.Array
    head_weight: jax.Array
    labels: jax.Array
    temperature: jax.Array
    teacher: Teacher | None
    lse: jax.Array
    entropy: jax.Array
    tempered_lse: jax.Array | None
    teacher_lse: jax.Array | None
    reverse_kl: jax.Array | None


def _online(state: SoftmaxState, zz, valid):
    """One tile of a streaming softmax over the last axis.

    Returns the updated state, the tile's ``exp(z - m_new)`` (0 on invalid columns) and the rescale factor
    ``alpha = exp(m_old - m_new)`` for any other sums weighted the same way.
    """
    m, s, u = state.running_max, state.running_sum, state.centred_moment
    m_new = jnp.maximum(m, jnp.max(jnp.where(valid, zz, -jnp.inf), axis=-1))
    d = zz - m_new[..., None]
    e = jnp.where(valid, jnp.exp(d), 0.0)
    alpha = jnp.exp(m - m_new)
    s_new = alpha * s + jnp.sum(e, axis=-1)
    u_new = alpha * (u + (m - m_new) * s) + jnp.sum(e * jnp.where(valid, d, 0.0), axis=-1)
    return SoftmaxState(m_new, s_new, u_new), e, alpha


def _fwd_stats(hidden, head_weight, labels, tau, teacher: Teacher | None, chunk: int, vtile: int, tempered: bool):
    """Streaming statistics.  Shapes: hidden [B,T,D], weight [V,D], labels [B,T] int32, tau [B,T] float32,
    teacher ``None`` or a :class:`Teacher`.
    Returns a dict of [B,T] float32 arrays (public outputs plus the log-sum-exps the backward pass needs)."""
    bsz, seq, _ = hidden.shape
    vocab = head_weight.shape[0]
    n_seq = -(-seq // chunk)
    n_voc = -(-vocab // vtile)
    with_teacher = teacher is not None

    def seq_body(i, bufs):
        start = block_start(i, chunk, seq)
        sl = functools.partial(lax.dynamic_slice_in_dim, start_index=start, slice_size=chunk, axis=1)
        h, y = sl(hidden), sl(labels)  # [B,c,D], [B,c]
        inv_tau = 1.0 / sl(tau)  # [B,c]
        if with_teacher:
            th, inv_ttau = sl(teacher.hidden), 1.0 / sl(teacher.temperature)

        def voc_body(j, acc: VocabScan) -> VocabScan:
            vstart = block_start(j, vtile, vocab)
            w = lax.dynamic_slice_in_dim(head_weight, vstart, vtile, axis=0)  # [vt,D]
            z = jnp.einsum("bcd,vd->bcv", h, w, preferred_element_type=_F32)
            cols = vstart + jnp.arange(vtile, dtype=jnp.int32)
            valid = (cols >= j * vtile)[None, None, :]  # columns already seen by the previous tile are out
            hit = valid & (cols[None, None, :] == y[..., None])
            label_logit = acc.label_logit + jnp.sum(jnp.where(hit, z, 0.0), axis=-1)
            student, e, alpha = _online(acc.student, z, valid)
            tempered_state = None
            if tempered:
                tempered_state, _, _ = _online(acc.tempered, z * inv_tau[..., None], valid)
            teacher_scan = None
            if with_teacher:
                tacc = acc.teacher
                wt = lax.dynamic_slice_in_dim(teacher.head_weight, vstart, vtile, axis=0)
                zt = jnp.einsum("bcd,vd->bcv", th, wt, preferred_element_type=_F32) * inv_ttau[..., None]
                teacher_softmax, eq, alpha_q = _online(tacc.softmax, zt, valid)
                # Cross moments: sum_v q_v z_v and sum_v p_v zt_v (unnormalised, rescaled like their weights).
                teacher_scan = TeacherScan(
                    softmax=teacher_softmax,
                    label_logit=tacc.label_logit + jnp.sum(jnp.where(hit, zt, 0.0), axis=-1),
                    teacher_weighted_logit=(alpha_q * tacc.teacher_weighted_logit
                                            + jnp.sum(eq * jnp.where(valid, z, 0.0), axis=-1)),
                    student_weighted_teacher_logit=(alpha * tacc.student_weighted_teacher_logit
                                                    + jnp.sum(e * jnp.where(valid, zt, 0.0), axis=-1)),
                )
            return VocabScan(student, label_logit, tempered_state, teacher_scan)

        zeros = jnp.zeros((bsz, chunk), _F32)
        acc0 = VocabScan(
            student=SoftmaxState.init((bsz, chunk)),
            label_logit=zeros,
            tempered=SoftmaxState.init((bsz, chunk)) if tempered else None,
            teacher=TeacherScan(SoftmaxState.init((bsz, chunk)), zeros, zeros, zeros) if with_teacher else None,
        )
        acc = lax.fori_loop(0, n_voc, voc_body, acc0)
        p = acc.student
        log_s = p.log_sum()
        lse = p.running_max + log_s
        # (z_y - m) - log s, not z_y - (m + log s): the difference of two nearby logits is exact, so a
        # near-certain token keeps its tiny log-prob instead of rounding to the float32 grid at |lse| (~2e-6 at
        # lse ~ 30, as large as OXA's unlikelihood epsilon).
        new = {"logprob": (acc.label_logit - p.running_max) - log_s, "entropy": p.entropy(), "lse": lse}
        if tempered:
            pt = acc.tempered
            log_ts = pt.log_sum()
            new["tempered_logprob"] = (acc.label_logit * inv_tau - pt.running_max) - log_ts
            new["tempered_lse"] = pt.running_max + log_ts
            new["tempered_entropy"] = pt.entropy()
        if with_teacher:
            t = acc.teacher
            q = t.softmax
            log_qs = q.log_sum()
            qlse = q.running_max + log_qs
            eq_zt = q.running_max + q.centred_moment / q.running_sum  # E_q[zt]
            eq_z = t.teacher_weighted_logit / q.running_sum  # E_q[z]
            ep_zt = t.student_weighted_teacher_logit / p.running_sum  # E_p[zt]
            ep_z = p.running_max + p.centred_moment / p.running_sum  # E_p[z]
            new["teacher_logprob"] = (t.label_logit - q.running_max) - log_qs
            new["teacher_entropy"] = q.entropy()
            new["forward_kl"] = (eq_zt - qlse) - (eq_z - lse)
            new["reverse_kl"] = (ep_z - lse) - (ep_zt - qlse)
            new["teacher_lse"] = qlse
        # Overlapping positions of a clamped last chunk are recomputed to identical values: plain overwrite.
        return {k: lax.dynamic_update_slice_in_dim(bufs[k], new[k], start, axis=1) for k in bufs}

    names = ["logprob", "entropy", "lse"]
    names += ["tempered_logprob", "tempered_lse", "tempered_entropy"] if tempered else []
    names += ["teacher_logprob", "teacher_entropy", "forward_kl", "reverse_kl", "teacher_lse"] if with_teacher else []
    bufs0 = {k: jnp.zeros((bsz, seq), _F32) for k in names}
    with jax.named_scope("lm_head"):
        return lax.fori_loop(0, n_seq, seq_body, bufs0)


_PUBLIC = ("logprob", "entropy", "tempered_logprob", "tempered_entropy", "teacher_logprob", "teacher_entropy",
           "forward_kl", "reverse_kl")
# functions of the teacher only, and the tempered entropy (a metric: GRPO's rollout-temperature entropy)
_NO_GRAD = ("teacher_logprob", "teacher_entropy", "tempered_entropy")


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _chunked_core(hidden, head_weight, labels, tau, teacher, chunk, vtile, tempered):
    out = _fwd_stats(hidden, head_weight, labels, tau, teacher, chunk, vtile, tempered)
    return {k: out[k] for k in _PUBLIC if k in out}


def _core_fwd(hidden, head_weight, labels, tau, teacher, chunk, vtile, tempered):
    # symbolic_zeros=True wraps the differentiable primals; unwrap them.
    hidden, head_weight, labels, tau = (x.value for x in (hidden, head_weight, labels, tau))
    teacher = jax.tree.map(lambda x: x.value, teacher)
    out = _fwd_stats(hidden, head_weight, labels, tau, teacher, chunk, vtile, tempered)
    res = Residuals(hidden=hidden, head_weight=head_weight, labels=labels, temperature=tau, teacher=teacher,
                    lse=out["lse"], entropy=out["entropy"], tempered_lse=out.get("tempered_lse"),
                    teacher_lse=out.get("teacher_lse"), reverse_kl=out.get("reverse_kl"))
    return {k: out[k] for k in _PUBLIC if k in out}, res


def _core_bwd(chunk, vtile, tempered, res: Residuals, g):
    hidden, head_weight, labels, teacher = res.hidden, res.head_weight, res.labels, res.teacher
    bsz, seq, dim = hidden.shape
    vocab = head_weight.shape[0]
    n_seq = -(-seq // chunk)
    n_voc = -(-vocab // vtile)

    # Outputs the caller does not differentiate arrive as symbolic zeros: their terms are skipped entirely
    # (a plain cross-entropy then costs no entropy, tempered-softmax or teacher work in the backward pass).
    def cot(name):
        if name in g and name not in _NO_GRAD and not isinstance(g[name], SymbolicZero):
            return g[name].astype(_F32)
        return None

    g_lp, g_ent, g_tlp, g_fkl, g_rkl = (cot(k) for k in ("logprob", "entropy", "tempered_logprob", "forward_kl",
                                                          "reverse_kl"))
    need_p = any(x is not None for x in (g_lp, g_ent, g_fkl, g_rkl))
    need_q = g_fkl is not None or g_rkl is not None
    # The logit cotangent is cast to the activation dtype before the two matmuls, as autodiff of a
    # bf16 x bf16 -> f32 einsum would do; accumulation stays float32.
    mm_dtype = jnp.promote_types(hidden.dtype, head_weight.dtype)

    def voc_body(j, carry):
        dh, dw = carry
        vstart = block_start(j, vtile, vocab)
        w = lax.dynamic_slice_in_dim(head_weight, vstart, vtile, axis=0)  # [vt,D]
        if need_q:
            wt = lax.dynamic_slice_in_dim(teacher.head_weight, vstart, vtile, axis=0)
        cols = vstart + jnp.arange(vtile, dtype=jnp.int32)
        vvalid = cols >= j * vtile

        def seq_body(i, carry2):
            dh, dwt = carry2
            start = block_start(i, chunk, seq)
            sl = functools.partial(lax.dynamic_slice_in_dim, start_index=start, slice_size=chunk, axis=1)
            h, y = sl(hidden), sl(labels)
            z = jnp.einsum("bcd,vd->bcv", h, w, preferred_element_type=_F32)
            onehot = (cols[None, None, :] == y[..., None]).astype(_F32)
            dz = jnp.zeros(z.shape, _F32)
            if need_p:
                logp = z - sl(res.lse)[..., None]
                p = jnp.exp(logp)
                if g_lp is not None:
                    dz = dz + sl(g_lp)[..., None] * (onehot - p)
                if g_ent is not None:
                    dz = dz - sl(g_ent)[..., None] * p * (logp + sl(res.entropy)[..., None])
            if g_tlp is not None:
                inv_tau = 1.0 / sl(res.temperature)
                q_t = jnp.exp(z * inv_tau[..., None] - sl(res.tempered_lse)[..., None])
                dz = dz + (sl(g_tlp) * inv_tau)[..., None] * (onehot - q_t)
            if need_q:
                zt = jnp.einsum("bcd,vd->bcv", sl(teacher.hidden), wt, preferred_element_type=_F32)
                logq = zt / sl(teacher.temperature)[..., None] - sl(res.teacher_lse)[..., None]
                if g_fkl is not None:  # d KL(q||p) / dz = p - q
                    dz = dz + sl(g_fkl)[..., None] * (p - jnp.exp(logq))
                if g_rkl is not None:  # d KL(p||q) / dz = p (log p - log q - KL(p||q))
                    dz = dz + sl(g_rkl)[..., None] * p * (logp - logq - sl(res.reverse_kl)[..., None])
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

    with jax.named_scope("lm_head"):
        dh0 = jnp.zeros((bsz, seq, dim), _F32)
        dw0 = jnp.zeros(head_weight.shape, head_weight.dtype)
        dh, dw = lax.fori_loop(0, n_voc, voc_body, (dh0, dw0))
        dh = dh.astype(hidden.dtype)
    # labels, temperatures and the teacher are constants of this function (no gradient).
    return dh, dw, None, None, None


_chunked_core.defvjp(_core_fwd, _core_bwd, symbolic_zeros=True)


def chunked_token_stats(
    hidden: jax.Array,
    head_weight: jax.Array,
    labels: jax.Array,
    *,
    chunk_size: int,
    temperature: Any = None,
    vocab_chunk_size: int = 8192,
    teacher_hidden: jax.Array | None = None,
    teacher_head_weight: jax.Array | None = None,
    teacher_temperature: Any = None,
) -> dict[str, jax.Array]:
    """Label log-probs and entropies of ``softmax(hidden @ head_weight.T)`` without the ``[B,T,V]`` logits.

    ``logits[b, t, v] = sum_d hidden[b, t, d] * head_weight[v, d]`` with float32 accumulation; all softmax
    statistics are float32.  The sequence is processed ``chunk_size`` positions at a time and the vocabulary
    ``vocab_chunk_size`` rows at a time, so the largest live block is ``[B, chunk_size, vocab_chunk_size]``
    float32.  Neither size has to divide ``T`` or ``V``.  Differentiable (reverse mode) in ``hidden`` and
    ``head_weight`` through a custom VJP that recomputes each block (outputs left out of the loss cost
    nothing in the backward pass); usable forward-only under ``jit``.

    Teacher terms: with ``teacher_hidden`` (and ``teacher_head_weight``, default ``head_weight``) the
    teacher distribution ``q = softmax(teacher_hidden @ teacher_head_weight.T / teacher_temperature)`` is
    streamed through the same tiles, giving the full-vocabulary divergences between the student ``p`` and
    ``q`` that CurioSFT's ``forward_kl`` / ``reverse_kl`` variants need.  The teacher is a constant: no
    gradient flows into any teacher argument.

    Args:
      hidden: ``[B, T, D]`` final hidden states (bfloat16 or float32).
      head_weight: ``[V, D]`` output-embedding matrix (the HuggingFace ``lm_head.weight`` / tied embedding
        layout).
      labels: ``[B, T]`` integer ids scored at each position (already shifted).  Ids outside ``[0, V)`` give
        ``logprob = -logsumexp`` (treat them as masked).
      chunk_size: positions per sequence chunk (static Python int; clipped to ``T``).
      temperature: ``None``, a Python/array scalar, or a ``[B, T]`` array of per-token temperatures (> 0)
        for ``"tempered_logprob"``.  A constant: no gradient flows into it.
      vocab_chunk_size: vocabulary rows per tile (static; clipped to ``V``).
      teacher_hidden: optional ``[B, T, D]`` teacher hidden states.
      teacher_head_weight: optional ``[V, D]`` teacher head weight (default: ``head_weight``).
      teacher_temperature: scalar or ``[B, T]`` temperature of the teacher (default 1), e.g. from
        ``curio_temperatures`` / ``chunked_curio_teacher``.

    Returns:
      dict of ``[B, T]`` float32 arrays:
        ``"logprob"``: ``log p(label)`` with ``p = softmax(z)`` (nats);
        ``"entropy"``: ``-sum_v p_v log p_v`` (nats);
        ``"tempered_logprob"`` (only with ``temperature``): ``log softmax(z / temperature)[label]``;
        ``"tempered_entropy"`` (only with ``temperature``): entropy of ``softmax(z / temperature)`` (nats, no
        gradient);
        with a teacher: ``"teacher_logprob"`` (``log q(label)``, no gradient), ``"teacher_entropy"``
        (no gradient), ``"forward_kl"`` (``KL(q || p)``) and ``"reverse_kl"`` (``KL(p || q)``).
    """
    if hidden.ndim != 3 or head_weight.ndim != 2 or hidden.shape[-1] != head_weight.shape[-1]:
        raise ValueError(f"expected hidden [B,T,D] and head_weight [V,D], got {hidden.shape}, {head_weight.shape}")
    bsz, seq, _ = hidden.shape
    chunk = max(1, min(int(chunk_size), seq))
    vtile = max(1, min(int(vocab_chunk_size), head_weight.shape[0]))
    tempered = temperature is not None
    tau = jnp.broadcast_to(jnp.asarray(1.0 if temperature is None else temperature, _F32), (bsz, seq))
    tau = lax.stop_gradient(tau)
    teacher = None
    if teacher_hidden is not None:
        tw = head_weight if teacher_head_weight is None else teacher_head_weight
        if teacher_hidden.shape != hidden.shape or tw.shape != head_weight.shape:
            raise ValueError(f"teacher shapes {teacher_hidden.shape}, {tw.shape} must match the student's")
        ttau = jnp.broadcast_to(jnp.asarray(1.0 if teacher_temperature is None else teacher_temperature, _F32),
                                (bsz, seq))
        teacher = jax.tree.map(lax.stop_gradient, Teacher(hidden=teacher_hidden, head_weight=tw, temperature=ttau))
    return _chunked_core(hidden, head_weight, labels.astype(jnp.int32), tau, teacher, chunk, vtile, tempered)


def naive_token_stats(hidden: jax.Array, head_weight: jax.Array, labels: jax.Array, *, temperature: Any = None,
                      teacher_hidden: jax.Array | None = None, teacher_head_weight: jax.Array | None = None,
                      teacher_temperature: Any = None):
    """Reference for :func:`chunked_token_stats` that materialises the full ``[B, T, V]`` float32 logits.

    Same arguments (minus the block sizes) and same outputs; meant for small shapes, tests and benchmarks.
    """
    z = jnp.einsum("btd,vd->btv", hidden, head_weight, preferred_element_type=_F32)
    out = {"logprob": token_logprobs(z, labels), "entropy": token_entropy(z)}
    if temperature is not None:
        tau = lax.stop_gradient(jnp.broadcast_to(jnp.asarray(temperature, _F32), labels.shape))
        out["tempered_logprob"] = token_logprobs(z / tau[..., None], labels)
        out["tempered_entropy"] = lax.stop_gradient(token_entropy(z / tau[..., None]))
    if teacher_hidden is not None:
        tw = head_weight if teacher_head_weight is None else teacher_head_weight
        zt = jnp.einsum("btd,vd->btv", teacher_hidden, tw, preferred_element_type=_F32)
        ttau = jnp.broadcast_to(jnp.asarray(1.0 if teacher_temperature is None else teacher_temperature, _F32),
                                labels.shape)
        logq = lax.stop_gradient(jax.nn.log_softmax(zt / ttau[..., None], axis=-1))
        logp = jax.nn.log_softmax(z, axis=-1)
        out["teacher_logprob"] = token_logprobs(logq, labels)
        out["teacher_entropy"] = token_entropy(logq)
        out["forward_kl"] = jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)
        out["reverse_kl"] = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    return out
