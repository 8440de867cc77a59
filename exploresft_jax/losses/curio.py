"""CurioSFT: cross-entropy plus self-exploratory distillation toward a temperature-scaled teacher.

The teacher's logits (a lagged copy of the model, or the live model's own logits, detached: the training code
chooses) are divided by a per-token temperature ``tau_t`` picked from the teacher's entropy
(:func:`curio_temperatures`).  As released, the distillation term is the ``k2`` estimator at the label token:

    L = mean_t [ -log pi(y_t) + coef * 0.5 * (log pi(y_t) - log pi_tilde(y_t))^2 ],
    pi_tilde = softmax(teacher_logits / tau)   (no gradient)

Full-vocabulary variants: ``divergence="forward_kl"`` uses ``KL(pi_tilde || pi)`` and ``"reverse_kl"``
uses ``KL(pi || pi_tilde)`` per token instead of the ``k2`` term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from exploresft_jax.losses.reduce import safe_divide
from exploresft_jax.losses.token_stats import block_start, token_entropy, token_logprobs

_F32 = jnp.float32
DIVERGENCES = ("k2", "forward_kl", "reverse_kl")


def _entropy_at(z: jax.Array, inv_tau: jax.Array) -> jax.Array:
    return token_entropy(z * inv_tau[..., None])


def curio_temperatures(teacher_logits: jax.Array, *, tau_min: float = 1.1, tau_max: float = 1.5,
                       pivot: float = 1.2, slope: float = 2.0, max_increase: float = 0.5, top_k: int = 512,
                       iters: int = 20, floor: float = 0.03) -> jax.Array:
    """Entropy-guided per-token temperatures, as in the CurioSFT release.  Float32 throughout, no gradient.

    For each position:
      1. ``H`` = entropy (nats) of ``softmax`` over the ``top_k`` largest logits only;
      2. target ``H* = H + max_increase * sigmoid(slope * (H - pivot))``;
      3. ``tau`` solves ``H_topk(softmax(z / tau)) = H*`` by ``iters`` bisection steps on ``[tau_min, tau_max]``
         (the midpoint of the final bracket); if ``H* <= H_topk(tau_min)`` then ``tau = tau_min``, if
         ``H* >= H_topk(tau_max)`` then ``tau = tau_max``;
      4. positions whose full-vocabulary entropy is ``<= floor`` nats get ``tau_min`` (near one-hot tokens, for
         which even ``tau_max`` cannot reach the target).

    Args:
      teacher_logits: ``[..., V]`` any float dtype.

    Returns:
      ``[...]`` float32 temperatures in ``[tau_min, tau_max]``.
    """
    z = lax.stop_gradient(teacher_logits).astype(_F32)
    k = min(int(top_k), z.shape[-1])
    zk = lax.top_k(z, k)[0] if k < z.shape[-1] else z
    h = token_entropy(zk)
    target = h + max_increase * jax.nn.sigmoid(slope * (h - pivot))
    lo0 = jnp.full(h.shape, tau_min, _F32)
    hi0 = jnp.full(h.shape, tau_max, _F32)

    def step(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = _entropy_at(zk, 1.0 / mid) < target  # entropy grows with tau: go right
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = lax.fori_loop(0, iters, step, (lo0, hi0))
    tau = 0.5 * (lo + hi)
    tau = jnp.where(target <= _entropy_at(zk, 1.0 / lo0), tau_min, tau)
    tau = jnp.where(target >= _entropy_at(zk, 1.0 / hi0), tau_max, tau)
    tau = jnp.where(token_entropy(z) <= floor, tau_min, tau)
    return tau


def curio_sft_loss_from_logprobs(logprob: jax.Array, teacher_tempered_logprob: jax.Array, mask: jax.Array, *,
                                 coef: float = 1.0, denominator=None) -> tuple[jax.Array, dict]:
    """Released CurioSFT objective (``k2`` at the label) from per-token log-probs (chunked-head friendly).

    Args:
      logprob: ``[B, T]`` float32 student label log-probs (with gradient).
      teacher_tempered_logprob: ``[B, T]`` ``log softmax(teacher / tau)[label]``; gradient is stopped here.
      mask: ``[B, T]`` counted tokens.
      coef: weight of the distillation term (release: 1.0).
      denominator: optional global token count; default ``sum(mask)``.

    Returns:
      ``(loss, metrics)``: scalar float32; metrics ``nll``, ``sed`` (token means), ``nll_sum``, ``sed_sum``,
      ``token_count`` and ``weight`` (token mean of the implied CE weight ``1 - (lp - lp_tilde)``).
    """
    m = mask.astype(_F32)
    diff = logprob - lax.stop_gradient(teacher_tempered_logprob.astype(_F32))
    nll_sum = jnp.sum(-logprob * m)
    sed_sum = jnp.sum(0.5 * diff**2 * m)
    count = jnp.sum(m)
    den = count if denominator is None else denominator
    loss = safe_divide(nll_sum + coef * sed_sum, den)
    return loss, {"loss": loss, "nll": safe_divide(nll_sum, count), "sed": safe_divide(sed_sum, count),
                  "nll_sum": nll_sum, "sed_sum": sed_sum, "token_count": count,
                  "weight": safe_divide(jnp.sum(lax.stop_gradient(1.0 - coef * diff) * m), count)}


def curio_sft_loss_from_divergence(logprob: jax.Array, divergence: jax.Array, mask: jax.Array, *, coef: float = 1.0,
                                   denominator=None) -> tuple[jax.Array, dict]:
    """CurioSFT with a full-vocabulary divergence already computed per token (chunked-head friendly).

    Use ``chunked_token_stats(student_hidden, head_weight, labels, teacher_hidden=..., teacher_head_weight=...,
    teacher_temperature=tau)`` and pass its ``"logprob"`` and ``"forward_kl"`` (or ``"reverse_kl"``).

    Args:
      logprob: ``[B, T]`` student label log-probs.  divergence: ``[B, T]`` per-token divergence (nats), with
        gradient.  mask: ``[B, T]``.  coef: weight.  denominator: optional global token count.

    Returns:
      ``(loss, metrics)``: ``(sum CE + coef * sum divergence) / denominator``; metrics ``nll``, ``sed``, sums,
      ``token_count``.
    """
    m = mask.astype(_F32)
    nll_sum, sed_sum, count = jnp.sum(-logprob * m), jnp.sum(divergence * m), jnp.sum(m)
    loss = safe_divide(nll_sum + coef * sed_sum, count if denominator is None else denominator)
    return loss, {"loss": loss, "nll": safe_divide(nll_sum, count), "sed": safe_divide(sed_sum, count),
                  "nll_sum": nll_sum, "sed_sum": sed_sum, "token_count": count}


def curio_sft_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, mask: jax.Array, *,
                   coef: float = 1.0, divergence: str = "k2", temperature=None, denominator=None,
                   **tau_kwargs) -> tuple[jax.Array, dict]:
    """CurioSFT loss on materialised logits.

    Args:
      student_logits: ``[B, T, V]`` the model being trained (temperature 1).
      teacher_logits: ``[B, T, V]`` teacher logits (lagged copy or detached live model); no gradient flows.
      labels: ``[B, T]`` int.  mask: ``[B, T]`` counted tokens.
      coef: distillation weight (release: 1.0).
      divergence: ``"k2"`` (released: ``0.5 (log pi(y) - log pi_tilde(y))^2`` at the label),
        ``"forward_kl"`` (``sum_v pi_tilde (log pi_tilde - log pi)``) or ``"reverse_kl"``
        (``sum_v pi (log pi - log pi_tilde)``), all per token, nats.
      temperature: optional fixed temperature (scalar or ``[B, T]``) replacing the entropy-guided one
        (the fixed-tau ablation).
      denominator: optional global token count.
      **tau_kwargs: passed to :func:`curio_temperatures`.

    Returns:
      ``(loss, metrics)``: scalar float32 ``(sum CE + coef * sum divergence) / denominator``; metrics
      ``nll``, ``sed``, their sums, ``token_count``, ``tau`` (token mean), ``entropy`` and
      ``teacher_entropy`` (token means, nats).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    t_logits = lax.stop_gradient(teacher_logits).astype(_F32)
    if temperature is None:
        tau = curio_temperatures(t_logits, **tau_kwargs)
    else:
        tau = jnp.broadcast_to(jnp.asarray(temperature, _F32), labels.shape)
    tempered = t_logits / tau[..., None]
    lp = token_logprobs(student_logits, labels)
    m = mask.astype(_F32)
    count = jnp.sum(m)
    if divergence == "k2":
        loss, metrics = curio_sft_loss_from_logprobs(lp, token_logprobs(tempered, labels), mask, coef=coef,
                                                     denominator=denominator)
    else:
        log_pi = jax.nn.log_softmax(student_logits.astype(_F32), axis=-1)
        log_q = jax.nn.log_softmax(tempered, axis=-1)
        if divergence == "forward_kl":
            div = jnp.sum(jnp.exp(log_q) * (log_q - log_pi), axis=-1)
        else:
            div = jnp.sum(jnp.exp(log_pi) * (log_pi - log_q), axis=-1)
        loss, metrics = curio_sft_loss_from_divergence(lp, div, mask, coef=coef, denominator=denominator)
    def mean(x):
        return safe_divide(jnp.sum(lax.stop_gradient(x) * m), count)

    metrics.update(tau=mean(tau), entropy=mean(token_entropy(student_logits)),
                   teacher_entropy=mean(token_entropy(t_logits)))
    return loss, metrics


def chunked_curio_teacher(teacher_hidden: jax.Array, teacher_head_weight: jax.Array, labels: jax.Array, *,
                          chunk_size: int, temperature=None, **tau_kwargs) -> dict[str, jax.Array]:
    """Teacher terms for CurioSFT without the full ``[B, T, V]`` teacher logits (forward only, no gradient).

    Walks the sequence ``chunk_size`` positions at a time; each chunk builds ``[B, chunk, V]`` float32 logits
    (the top-k search needs the whole vocabulary row), picks the temperatures and the tempered label
    log-prob, and drops the block.

    Args:
      teacher_hidden: ``[B, T, D]`` teacher final hidden states.  teacher_head_weight: ``[V, D]``.
      labels: ``[B, T]`` int.  chunk_size: static int (need not divide ``T``).
      temperature: optional fixed temperature (scalar or ``[B, T]``) instead of the entropy-guided one.
      **tau_kwargs: passed to :func:`curio_temperatures`.

    Returns:
      dict of ``[B, T]`` float32: ``"tau"``, ``"tempered_logprob"`` (``log softmax(z / tau)[label]``) and
      ``"entropy"`` (teacher entropy at temperature 1, nats).  Feed ``"tempered_logprob"`` with the student's
      ``chunked_token_stats(...)["logprob"]`` to :func:`curio_sft_loss_from_logprobs`.
    """
    h = lax.stop_gradient(teacher_hidden)
    w = lax.stop_gradient(teacher_head_weight)
    bsz, seq, _ = h.shape
    chunk = max(1, min(int(chunk_size), seq))
    n = -(-seq // chunk)
    fixed = None if temperature is None else jnp.broadcast_to(jnp.asarray(temperature, _F32), (bsz, seq))
    labels = labels.astype(jnp.int32)

    def body(i, bufs):
        start = block_start(i, chunk, seq)  # clamped last chunk recomputes identical values
        z = jnp.einsum("bcd,vd->bcv", lax.dynamic_slice_in_dim(h, start, chunk, 1), w, preferred_element_type=_F32)
        y = lax.dynamic_slice_in_dim(labels, start, chunk, 1)
        if fixed is None:
            tau = curio_temperatures(z, **tau_kwargs)
        else:
            tau = lax.dynamic_slice_in_dim(fixed, start, chunk, 1)
        new = {"tau": tau, "tempered_logprob": token_logprobs(z / tau[..., None], y), "entropy": token_entropy(z)}
        return {k: lax.dynamic_update_slice_in_dim(bufs[k], new[k], start, 1) for k in bufs}

    bufs = {k: jnp.zeros((bsz, seq), _F32) for k in ("tau", "tempered_logprob", "entropy")}
    with jax.named_scope("curio_teacher"):
        return lax.fori_loop(0, n, body, bufs)
