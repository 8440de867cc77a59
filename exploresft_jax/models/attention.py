"""Causal grouped-query attention behind one function, with backends that never build [T, S] on an accelerator.

`attend(q, k, v, q_segment, kv_segment, ...)` is what the model calls for training, scoring and the sampler's
prefill. Which key a query may see is described by small per-token arrays, never by a [B, T, S] mask:

    key s is visible to query t  <=>  kv_segment[s] == q_segment[t]  and  kv_segment[s] != 0
                                      and  kv_pos[s] <= q_pos[t]

`q_pos` / `kv_pos` default to the row index (plain causal attention); segment 0 marks padding (never attended;
a query of segment 0 sees nothing and its output is 0 or, for `dense`, an ignored average). Packed rows give
each example its own segment id; left or right padding is segment 0.

Backends (`Qwen2Config.attention`, `--attention` of the scripts):
  dense      the reference: float32 scores [B, K, G, T, S] and one softmax. Memory O(T * S) per layer.
  blockwise  online-softmax attention over key/value blocks in plain JAX, with a custom VJP whose backward
             recomputes each block (FlashAttention-2 style), so neither pass keeps [T, S]. Blocks with no
             visible key (above the causal diagonal, other segments, padding) are skipped with `lax.cond`.
             Runs anywhere (CPU included); XLA partitions it over the batch and head axes.
  splash     TPU: the Pallas splash-attention kernel (causal mask + segment ids, GQA as a vmap of the MQA kernel
             over KV heads) under `shard_map` over the active mesh (Mosaic kernels are not auto-partitioned),
             with the kernel's own backward. Any T: a T that is not a multiple of 128 (the kernel's granularity)
             is padded up with segment-0 tokens.
  cudnn      GPU: `jax.nn.dot_product_attention(implementation="cudnn")` (causal + key lengths) for unpacked rows
             (`packed=False`: segment ids in {0, 1}), which must then be right-padded (tokens first, as GRPO's
             rollouts, `data.packing="none"` and score_ppl build them; a left-padded row yields NaN rather than
             a silently wrong value). Packed rows, and float32 inputs (cuDNN's fused attention takes 16-bit
             inputs only), go to the Pallas GPU (Triton) flash kernel, which takes segment ids; Triton needs
             power-of-two blocks, so T is padded up to a multiple of a power-of-two block with segment-0 tokens
             and a head dim that is not a power of two is padded with zero columns (results unchanged).
  auto       per platform of the compile target (the active mesh's devices, so a TPU topology compiled on a
             CPU host picks splash; else the default backend): TPU -> splash, GPU -> cudnn, CPU -> dense for
             small T x S, blockwise beyond.

A kernel backend (splash, cudnn) names the kernel for self-attention calls, the call's queries over its own
keys at row-index positions: training, scoring, the sampler's prefill into an empty cache. Calls that the
kernels do not express use other backends by design: a decode step (T == 1) uses dense whatever the backend
(one dot product per row, nothing to save), and a cache read (explicit positions, or T != S) uses blockwise
under auto or a kernel backend. `kernel_plan` says which implementation a call uses ("splash", "cudnn",
"triton", "blockwise", "dense").

A kernel backend is used or refused, never swapped: asked for a compile target of another platform (cudnn on
TPU, splash on GPU) it raises a one-line ValueError. On CPU (no GPU / TPU mesh active, default backend cpu) it
runs its reference mode (Pallas interpret, XLA) only inside `emulate_kernels()` (tests, debugging the argument
mapping on CPU), and is refused otherwise; to compile for an accelerator from a CPU host, trace under
`sharding.use_rules(mesh of the target's devices, rules)`.

Einsum letters: B batch, T queries, S keys, N query heads, K key/value heads, G = N // K, H head dim.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from exploresft_jax import sharding as shd

log = logging.getLogger(__name__)


class AttentionCall(NamedTuple):
    """One call of `attend`, as a backend receives it: q [B, T, N, H]; k, v in `kv_layout` ("BSKH" [B, S, K, H] or
    "BKSH" [B, K, S, H]); q_segment [B, T] / kv_segment [B, S] int32; q_pos / kv_pos [B, T] / [B, S] int32 or None
    (the row index); packed (static: False promises segment ids in {0, 1}); block_q / block_k (tile sizes or
    None for the default)."""

    q: jax.Array
    k: jax.Array
    v: jax.Array
    q_segment: jax.Array
    kv_segment: jax.Array
    q_pos: jax.Array | None
    kv_pos: jax.Array | None
    kv_layout: str
    packed: bool
    block_q: int | None
    block_k: int | None

    def kv_as(self, layout: str) -> tuple[jax.Array, jax.Array]:
        """(k, v) in `layout`."""
        if layout == self.kv_layout:
            return self.k, self.v
        return self.k.transpose(0, 2, 1, 3), self.v.transpose(0, 2, 1, 3)

    def positions(self) -> tuple[jax.Array, jax.Array]:
        """(q_pos, kv_pos), the row index where not given."""
        b, t = self.q_segment.shape
        s = self.kv_segment.shape[1]
        q_pos = _index_positions(b, t) if self.q_pos is None else self.q_pos.astype(jnp.int32)
        kv_pos = _index_positions(b, s) if self.kv_pos is None else self.kv_pos.astype(jnp.int32)
        return q_pos, kv_pos


@dataclasses.dataclass(frozen=True)
class Backend:
    """A registered attention backend: `fn(call: AttentionCall) -> [B, T, N, H]` in q's dtype.

    kernel: it expresses self-attention calls only (row-index positions, T == S); decode steps go to `dense`
    and cache reads to `blockwise`. platform: the compile target a kernel runs for ("tpu", "gpu"; None: any);
    any other target is refused, CPU included outside `emulate_kernels()`."""

    name: str
    fn: Callable[[AttentionCall], jax.Array]
    kernel: bool = False
    platform: str | None = None


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, *, kernel: bool = False, platform: str | None = None):
    """Decorator: adds an attention backend under `name` (then `model.attention=name`, `--attention name`); a
    `platform` makes it a kernel for that platform (see `Backend`)."""

    def wrap(fn):
        BACKENDS[name] = Backend(name, fn, kernel or platform is not None, platform)
        return fn

    return wrap


def backend_choices() -> tuple[str, ...]:
    """What `attention` may be set to: "auto" or a registered backend."""
    return ("auto", *BACKENDS)

# A large finite negative instead of -inf: a fully masked row then stays finite (and is zeroed or ignored).
MASK_VALUE = -1e30
# CPU: below this many score entries per (row, head), dense is fast and small enough.
_CPU_DENSE_MAX_SCORES = 1024 * 1024
DEFAULT_BLOCK = 512


_GPU_PLATFORMS = ("gpu", "cuda", "rocm")
_EMULATE: contextvars.ContextVar[bool] = contextvars.ContextVar("exploresft_emulate_kernels", default=False)


@contextlib.contextmanager
def emulate_kernels(enabled: bool = True):
    """Within this context (read at trace time, like `sharding.use_rules`), a kernel backend (splash, cudnn)
    asked for on a CPU compile target runs its reference mode: Pallas interpret for the splash and Triton
    kernels, XLA for cuDNN's fused attention (and cudnn's 16-bit-only rule is not applied, so its float32
    mapping is testable). For tests and for debugging on CPU; outside it such a request is refused. No effect
    on a GPU or TPU compile target."""
    token = _EMULATE.set(enabled)
    try:
        yield
    finally:
        _EMULATE.reset(token)


def emulating_kernels() -> bool:
    """Whether the enclosing code runs inside `emulate_kernels()`."""
    return _EMULATE.get()


def _canonical_platform(platform: str) -> str:
    return "gpu" if platform in _GPU_PLATFORMS else platform


def compile_target() -> tuple[str, str]:
    """(platform, where it comes from): the active mesh's devices if rules are active, else the default backend.
    Platform names are "cpu", "gpu" (cuda / rocm) or "tpu"."""
    active = shd.active_mesh()
    if active is not None:
        return _canonical_platform(active.devices.flat[0].platform), "the active mesh's devices"
    return _canonical_platform(jax.default_backend()), "the default backend; no sharding.use_rules mesh is active"


def _check_kernel(name: str, platform: str, source: str) -> None:
    """Raises a one-line ValueError unless kernel backend `name` runs for `platform`: its own platform, or CPU
    inside `emulate_kernels()`."""
    own = BACKENDS[name].platform
    if own is None or platform == own or (platform == "cpu" and _EMULATE.get()):
        return
    msg = f"attention={name!r} needs a {own.upper()} compile target; this call compiles for {platform} ({source})"
    if platform == "cpu":
        msg += ("; compile under sharding.use_rules(mesh of the target's devices, rules), use attention='blockwise', "
                "or run the kernel's reference mode on CPU inside attention.emulate_kernels()")
    raise ValueError(msg)


def _resolve(backend: str, t: int, s: int, index_positions: bool, platform: str, source: str) -> str:
    if backend not in backend_choices():
        raise ValueError(f"attention={backend!r}; expected one of {backend_choices()}")
    if backend != "auto" and BACKENDS[backend].kernel:
        _check_kernel(backend, platform, source)
    if t == 1:  # a decode step: its scores are [1, S], nothing to save, and no kernel beats one dot product
        return "dense"
    if not (index_positions and t == s):  # a cache read: no kernel expresses it
        return "blockwise" if backend == "auto" or BACKENDS[backend].kernel else backend
    if backend == "auto":
        if platform == "tpu":
            return "splash"
        if platform == "gpu":
            return "cudnn"
        return "dense" if t * s <= _CPU_DENSE_MAX_SCORES else "blockwise"
    return backend


def _target(platform: str | None) -> tuple[str, str]:
    return compile_target() if platform is None else (_canonical_platform(platform), "as given")


def resolve_backend(backend: str, *, t: int, s: int, index_positions: bool, packed: bool = True,
                    platform: str | None = None) -> str:
    """The registered backend that runs a call of T queries over S keys (static: decided at trace time).

    index_positions: positions are the row index. A kernel backend names the kernel for self-attention calls
    (index_positions and T == S, any T): training, scoring, the sampler's prefill into an empty cache; cache
    reads (explicit positions or T != S) use blockwise under auto or a kernel backend, and decode steps
    (T == 1) use dense whatever the backend. auto: TPU -> splash, GPU -> cudnn, CPU -> dense up to 1M scores
    per (row, head), blockwise beyond. A kernel for a platform other than its own is refused with a one-line
    ValueError, CPU included outside `emulate_kernels()`. platform: "cpu" / "gpu" / "tpu", default the compile
    target (the active mesh's devices, else the default backend). packed: unused here (see `kernel_plan`).
    """
    del packed
    return _resolve(backend, t, s, index_positions, *_target(platform))


def _cudnn_impl(packed: bool, dtype, platform: str) -> str:
    """cudnn's implementation: "cudnn" (cuDNN's fused attention: causal + key lengths) for unpacked rows in 16
    bits, else "triton" (the Pallas GPU flash kernel, with segment ids). Float32 goes to triton on a GPU
    only: cuDNN's fused attention takes 16-bit inputs; its CPU reference (XLA) takes float32."""
    if packed or (platform == "gpu" and jnp.dtype(dtype).itemsize != 2):
        return "triton"
    return "cudnn"


def kernel_plan(backend: str, *, t: int, s: int, index_positions: bool, packed: bool, dtype,
                platform: str | None = None) -> str:
    """Which implementation a call uses: "splash", "cudnn" (cuDNN fused attention), "triton" (Pallas GPU
    flash), "blockwise", "dense" (or a registered backend's name). Arguments as `resolve_backend`; packed:
    segment ids beyond {0, 1}; dtype: q's dtype. On CPU inside `emulate_kernels()` the kernels named run in
    their reference modes. Raises the refusals of `resolve_backend`."""
    platform, source = _target(platform)
    name = _resolve(backend, t, s, index_positions, platform, source)
    return _cudnn_impl(packed, dtype, platform) if name == "cudnn" else name


def visible(q_segment, kv_segment, q_pos, kv_pos) -> jax.Array:
    """[B, T, S] bool: which keys each query may see (the rule in the module docstring)."""
    same = (q_segment[:, :, None] == kv_segment[:, None, :]) & (kv_segment[:, None, :] != 0)
    return same & (kv_pos[:, None, :] <= q_pos[:, :, None])


def _index_positions(b: int, n: int) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))


def attend(q: jax.Array, k: jax.Array, v: jax.Array, q_segment: jax.Array, kv_segment: jax.Array, *,
           q_pos: jax.Array | None = None, kv_pos: jax.Array | None = None, backend: str = "auto",
           kv_layout: str = "BSKH", packed: bool = True, block_q: int | None = None,
           block_k: int | None = None) -> jax.Array:
    """Causal GQA attention.

    q: [B, T, N, H]; k, v: [B, S, K, H] ("BSKH") or [B, K, S, H] ("BKSH", a layer of the KV cache);
    q_segment: [B, T] int; kv_segment: [B, S] int; q_pos / kv_pos: [B, T] / [B, S] int or None (row index).
    block_q / block_k: blockwise tile sizes (default: the module's DEFAULT_BLOCK, read at trace time).
    packed: static; False promises every segment id is 0 or 1 (padding only, no packed examples) and, for the
    cudnn backend, right-padded rows, which lets it use cuDNN itself (a left-padded row then gives NaN).
    The backend is resolved by `resolve_backend` (`kernel_plan` names the implementation); a kernel that cannot
    run for the compile target raises ValueError.
    Returns [B, T, N, H] in q's dtype; scores and softmax statistics in float32.
    """
    if kv_layout not in ("BSKH", "BKSH"):
        raise ValueError(f"kv_layout={kv_layout!r}; expected 'BSKH' or 'BKSH'")
    b, t, n, h = q.shape
    s = k.shape[kv_layout.index("S")]
    index_positions = q_pos is None and kv_pos is None
    name = _resolve(backend, t, s, index_positions, *compile_target())
    call = AttentionCall(q, k, v, q_segment.astype(jnp.int32), kv_segment.astype(jnp.int32), q_pos, kv_pos,
                         kv_layout, packed, block_q, block_k)
    return BACKENDS[name].fn(call)


def ragged_visibility(lengths: jax.Array, window: int) -> dict:
    """`attend` keyword arguments for one decode token per row, at position lengths [B], over cache entries
    [0, window) of its row (entry j visible when j <= lengths[b]: the row's earlier tokens and its own)."""
    b = lengths.shape[0]
    pos = lengths[:, None].astype(jnp.int32)
    kv_pos = jnp.broadcast_to(jnp.arange(window, dtype=jnp.int32), (b, window))
    return dict(q_segment=jnp.ones((b, 1), jnp.int32), kv_segment=(kv_pos <= pos).astype(jnp.int32), q_pos=pos,
                kv_pos=kv_pos, packed=False)


@register_backend("splash", platform="tpu")
def _splash(c: AttentionCall) -> jax.Array:
    k, v = c.kv_as("BSKH")
    return splash_attention(c.q, k, v, c.q_segment, c.kv_segment)


@register_backend("cudnn", platform="gpu")
def _cudnn(c: AttentionCall) -> jax.Array:
    k, v = c.kv_as("BSKH")
    return cudnn_attention(c.q, k, v, c.q_segment, c.kv_segment, packed=c.packed)


@register_backend("blockwise")
def _blockwise(c: AttentionCall) -> jax.Array:
    k, v = c.kv_as("BKSH")
    q_pos, kv_pos = c.positions()
    return blockwise_attention(c.q, k, v, c.q_segment, c.kv_segment, q_pos, kv_pos,
                               block_q=c.block_q or DEFAULT_BLOCK, block_k=c.block_k or DEFAULT_BLOCK)


@register_backend("dense")
def _dense(c: AttentionCall) -> jax.Array:
    q_pos, kv_pos = c.positions()
    return dense_attention(c.q, c.k, c.v, visible(c.q_segment, c.kv_segment, q_pos, kv_pos),
                           kv_layout=c.kv_layout)


# --- dense (reference) -----------------------------------------------------------------------------------------
def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, kv_layout: str = "BSKH"):
    """Reference GQA attention with an explicit mask [B, T, S] bool (True = may attend). Shapes as `attend`."""
    b, t, n, h = q.shape
    kh = k.shape[kv_layout.index("K")]
    qg = q.reshape(b, t, kh, n // kh, h)
    scores = jnp.einsum(f"BTKGH,{kv_layout}->BKGTS", qg, k.astype(q.dtype), preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(h))
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum(f"BKGTS,{kv_layout}->BTKGH", probs, v.astype(q.dtype), preferred_element_type=jnp.float32)
    return out.reshape(b, t, n, h).astype(q.dtype)


# --- blockwise (any platform) ----------------------------------------------------------------------------------
def blockwise_attention(q, k, v, q_segment, kv_segment, q_pos, kv_pos, *, block_q: int = DEFAULT_BLOCK,
                        block_k: int = DEFAULT_BLOCK) -> jax.Array:
    """Online-softmax attention over key blocks; memory O(B * N * block_q * block_k) in both passes.

    q: [B, T, N, H]; k, v: [B, K, S, H]; segments / positions as in `attend` (all given). T and S are padded
    up to whole blocks with segment 0 (never visible). Returns [B, T, N, H] in q's dtype; a query that sees
    no key gets 0.
    """
    b, t, n, h = q.shape
    kh, s = k.shape[1], k.shape[2]
    bq, bk = min(block_q, t), min(block_k, s)
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
    qg = q.reshape(b, t, kh, n // kh, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    if tp != t:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, 0), (0, tp - t), (0, 0)))
        q_segment = jnp.pad(q_segment, ((0, 0), (0, tp - t)))
        q_pos = jnp.pad(q_pos, ((0, 0), (0, tp - t)))
    if sp != s:
        k = jnp.pad(k, ((0, 0), (0, 0), (0, sp - s), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, 0), (0, sp - s), (0, 0)))
        kv_segment = jnp.pad(kv_segment, ((0, 0), (0, sp - s)))
        kv_pos = jnp.pad(kv_pos, ((0, 0), (0, sp - s)))
    out = _flash(qg, k.astype(q.dtype), v.astype(q.dtype), q_segment, kv_segment, q_pos, kv_pos, bq, bk)
    return out[:, :, :, :t].transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _slice(x, i, size, axis):
    return lax.dynamic_slice_in_dim(x, i * size, size, axis=axis)


def _flash_forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, bq, bk):
    """q: [B, K, G, T, H]; k, v: [B, K, S, H] (T, S whole blocks). Returns out [B, K, G, T, H] (q dtype) and the
    float32 log-sum-exp [B, K, G, T] (0 where a query sees nothing)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    nq, nk = q.shape[3] // bq, k.shape[2] // bk

    def q_block(i):
        qb, qs, qp = _slice(q, i, bq, 3), _slice(q_seg, i, bq, 1), _slice(q_pos, i, bq, 1)

        def kv_block(carry, j):
            mask = visible(qs, _slice(kv_seg, j, bk, 1), qp, _slice(kv_pos, j, bk, 1))[:, None, None]

            def compute(carry):
                m, l, acc = carry
                sc = jnp.einsum("BKGTH,BKSH->BKGTS", qb, _slice(k, j, bk, 2),
                                preferred_element_type=jnp.float32) * scale
                sc = jnp.where(mask, sc, MASK_VALUE)
                m_new = jnp.maximum(m, jnp.max(sc, -1))
                p = jnp.where(mask, jnp.exp(sc - m_new[..., None]), 0.0)
                corr = jnp.exp(m - m_new)
                pv = jnp.einsum("BKGTS,BKSH->BKGTH", p.astype(v.dtype), _slice(v, j, bk, 2),
                                preferred_element_type=jnp.float32)
                return m_new, l * corr + jnp.sum(p, -1), acc * corr[..., None] + pv

            return lax.cond(jnp.any(mask), compute, lambda c: c, carry), None

        shape = qb.shape[:-1]
        init = (jnp.full(shape, MASK_VALUE, jnp.float32), jnp.zeros(shape, jnp.float32),
                jnp.zeros(qb.shape, jnp.float32))
        (m, l, acc), _ = lax.scan(kv_block, init, jnp.arange(nk))
        seen = l > 0
        out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
        return out.astype(q.dtype), lse

    out, lse = lax.map(q_block, jnp.arange(nq))  # [nq, B, K, G, bq, H], [nq, B, K, G, bq]
    out = jnp.moveaxis(out, 0, 3).reshape(q.shape)
    lse = jnp.moveaxis(lse, 0, 3).reshape(q.shape[:-1])
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _flash(q, k, v, q_seg, kv_seg, q_pos, kv_pos, bq, bk):
    return _flash_forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, bq, bk)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, q_pos, kv_pos, bq, bk):
    out, lse = _flash_forward(q, k, v, q_seg, kv_seg, q_pos, kv_pos, bq, bk)
    return out, (q, k, v, q_seg, kv_seg, q_pos, kv_pos, out, lse)


def _flash_bwd(bq, bk, res, d_out):
    """FlashAttention-2 backward: one pass for dq (query blocks outer), one for dk / dv (key blocks outer); each
    recomputes p = exp(s - lse) per block, so no [T, S] array is kept."""
    q, k, v, q_seg, kv_seg, q_pos, kv_pos, out, lse = res
    scale = 1.0 / math.sqrt(q.shape[-1])
    nq, nk = q.shape[3] // bq, k.shape[2] // bk
    dt = q.dtype
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)  # [B, K, G, T]

    def block_mask(i, j):
        """[B, 1, 1, bq, bk] visibility of query block i and key block j."""
        return visible(_slice(q_seg, i, bq, 1), _slice(kv_seg, j, bk, 1), _slice(q_pos, i, bq, 1),
                       _slice(kv_pos, j, bk, 1))[:, None, None]

    def probs(i, j, mask):
        """Block (i, j) under its mask: p and ds = p (dp - delta) as float32, and the q / d_out blocks."""
        qb, dob = _slice(q, i, bq, 3), _slice(d_out, i, bq, 3)
        sc = jnp.einsum("BKGTH,BKSH->BKGTS", qb, _slice(k, j, bk, 2), preferred_element_type=jnp.float32) * scale
        p = jnp.where(mask, jnp.exp(sc - _slice(lse, i, bq, 3)[..., None]), 0.0)
        dp = jnp.einsum("BKGTH,BKSH->BKGTS", dob, _slice(v, j, bk, 2), preferred_element_type=jnp.float32)
        ds = p * (dp - _slice(delta, i, bq, 3)[..., None])
        return p, ds, qb, dob

    def dq_block(i):
        def step(acc, j):
            mask = block_mask(i, j)  # decides the skip and masks the block: computed once

            def compute(acc):
                _, ds, _, _ = probs(i, j, mask)
                return acc + jnp.einsum("BKGTS,BKSH->BKGTH", ds.astype(dt), _slice(k, j, bk, 2),
                                        preferred_element_type=jnp.float32) * scale
            return lax.cond(jnp.any(mask), compute, lambda a: a, acc), None

        acc, _ = lax.scan(step, jnp.zeros(q.shape[:3] + (bq, q.shape[-1]), jnp.float32), jnp.arange(nk))
        return acc

    def dkv_block(j):
        def step(carry, i):
            mask = block_mask(i, j)

            def compute(carry):
                dk, dv = carry
                p, ds, qb, dob = probs(i, j, mask)
                dv = dv + jnp.einsum("BKGTS,BKGTH->BKSH", p.astype(dt), dob, preferred_element_type=jnp.float32)
                dk = dk + jnp.einsum("BKGTS,BKGTH->BKSH", ds.astype(dt), qb,
                                     preferred_element_type=jnp.float32) * scale
                return dk, dv
            return lax.cond(jnp.any(mask), compute, lambda c: c, carry), None

        zero = jnp.zeros(k.shape[:2] + (bk, k.shape[-1]), jnp.float32)
        (dk, dv), _ = lax.scan(step, (zero, zero), jnp.arange(nq))
        return dk, dv

    dq = jnp.moveaxis(lax.map(dq_block, jnp.arange(nq)), 0, 3).reshape(q.shape).astype(q.dtype)
    dk, dv = lax.map(dkv_block, jnp.arange(nk))  # [nk, B, K, bk, H]
    dk = jnp.moveaxis(dk, 0, 2).reshape(k.shape).astype(k.dtype)
    dv = jnp.moveaxis(dv, 0, 2).reshape(v.shape).astype(v.dtype)
    return dq, dk, dv, None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# --- splash (TPU) -----------------------------------------------------------------------------------------------
def _head_specs(mesh, rules, q, k):
    """shard_map specs: batch over the rules' act_batch axes; heads over 'tensor' only when both the query and
    the KV heads divide it (a query head's KV head must live on the same shard)."""
    batch = shd.logical_to_spec(("act_batch",), rules, mesh, q.shape[:1])
    batch_axes = batch[0] if len(batch) else None
    heads = shd.logical_to_spec((None, None, "act_heads"), rules, mesh, q.shape[:3])
    head_axes = heads[2] if len(heads) > 2 else None
    if head_axes is not None and k.shape[2] % shd.mesh_axes_size(mesh, head_axes):
        head_axes = None
    P = jax.sharding.PartitionSpec
    return P(batch_axes, None, head_axes, None), P(batch_axes, None)


def _pad_tokens(tp: int, hp: int, *arrays):
    """Pads [B, T, ...] arrays to T = tp with zeros (segment id 0 for [B, T] segment arrays), and the last axis of
    [B, T, heads, H] arrays to H = hp with zero columns."""
    out = []
    for x in arrays:
        pad = [(0, 0)] * x.ndim
        pad[1] = (0, tp - x.shape[1])
        if x.ndim == 4:
            pad[3] = (0, hp - x.shape[3])
        out.append(jnp.pad(x, pad) if any(p[1] for p in pad) else x)
    return out


SPLASH_GRANULE = 128  # the splash kernel's smallest block: T is padded up to a multiple of it


def splash_attention(q, k, v, q_segment, kv_segment, *, block: int | None = None) -> jax.Array:
    """Pallas TPU splash attention. q: [B, T, N, H]; k, v: [B, T, K, H]; segments [B, T]. Returns [B, T, N, H].

    Any T: T is padded up to a multiple of 128 with segment-0 tokens after every real one (causal masking and
    segment ids keep real queries from them); the block (`block`, default DEFAULT_BLOCK, else 512 / 256 / 128)
    is a multiple of 128 dividing the padded length. Padding (segment 0) queries attend padding keys here (the
    kernel compares segment ids only); their outputs are ignored downstream like every backend's. Runs for a
    TPU compile target, or in Pallas interpret mode on CPU inside `emulate_kernels()`; raises ValueError
    otherwise.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    platform, source = compile_target()
    _check_kernel("splash", platform, source)
    b, t, n, h = q.shape
    block = block or DEFAULT_BLOCK
    interpret = platform != "tpu"
    tp = -(-t // SPLASH_GRANULE) * SPLASH_GRANULE
    q, k, v, q_segment, kv_segment = _pad_tokens(tp, h, q, k, v, q_segment, kv_segment)

    def local(q, k, v, q_segment, kv_segment):
        lb, lt, ln, _ = q.shape
        lk = k.shape[2]
        g = ln // lk
        bs = next(c for c in (block, 512, 256, SPLASH_GRANULE)
                  if c % SPLASH_GRANULE == 0 and c <= lt and lt % c == 0)
        sizes = sk.BlockSizes(block_q=bs, block_kv=bs, block_kv_compute=bs, block_q_dkv=bs, block_kv_dkv=bs,
                              block_kv_dkv_compute=bs, block_q_dq=bs, block_kv_dq=bs)
        mask = sm.MultiHeadMask([sm.CausalMask((lt, lt)) for _ in range(g)])
        kernel = sk.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
        # [B, T, N, H] -> [B, K, G, T, H]; keys [B, K, T, H]; the MQA kernel runs per (row, KV head).
        qg = (q * (1.0 / math.sqrt(h))).astype(q.dtype).reshape(lb, lt, lk, g, h).transpose(0, 2, 3, 1, 4)
        kk, vv = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

        def one_row(qr, kr, vr, qs, ks):
            seg = sk.SegmentIds(q=qs, kv=ks)
            return jax.vmap(lambda qh, kx, vx: kernel(qh, kx, vx, segment_ids=seg))(qr, kr, vr)

        out = jax.vmap(one_row)(qg, kk, vv, q_segment, kv_segment)  # [B, K, G, T, H]
        return out.transpose(0, 3, 1, 2, 4).reshape(lb, lt, ln, h).astype(q.dtype)

    active = shd.active_rules()
    if active is None:
        return local(q, k, v, q_segment, kv_segment)[:, :t]
    mesh, rules = active
    qkv_spec, seg_spec = _head_specs(mesh, rules, q, k)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec, seg_spec),
                       out_specs=qkv_spec, check_vma=False)
    return fn(q, k, v, q_segment, kv_segment)[:, :t]


# --- cuDNN / Pallas GPU flash (GPU) -----------------------------------------------------------------------------
TRITON_MAX_BLOCK = 128


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def triton_block(t: int) -> tuple[int, int]:
    """(block, padded T) of the Pallas GPU kernel for T tokens: block = min(128, the next power of two >= T),
    T padded up to a multiple of it (the Triton lowering takes power-of-two block shapes only)."""
    bs = min(TRITON_MAX_BLOCK, _next_power_of_two(t))
    return bs, -(-t // bs) * bs


def cudnn_attention(q, k, v, q_segment, kv_segment, *, packed: bool = True) -> jax.Array:
    """GPU flash attention. q: [B, T, N, H]; k, v: [B, T, K, H]; segments [B, T] (0 = padding).

    packed=False (every segment id is 0 or 1) with 16-bit inputs: cuDNN's fused attention with `is_causal`
    and per-row key lengths = the number of non-padding tokens; such rows must be right-padded (a row that is
    not yields NaN; an all-padding row attends its first token, an ignored output). Otherwise (packed rows,
    float32 on a GPU): the Pallas GPU (Triton) flash kernel with segment ids (GQA by repeating the KV heads),
    any T and head dim: T is padded up to a multiple of a power-of-two block (`triton_block`) with segment-0
    tokens after every real one, and H to the next power of two with zero columns (the scale stays
    1 / sqrt(H); q.k and the output are unchanged), the output sliced back. Runs for a GPU compile target, or in
    reference modes (XLA / Pallas interpret) on CPU inside `emulate_kernels()`; raises ValueError otherwise.
    """
    platform, source = compile_target()
    _check_kernel("cudnn", platform, source)
    b, t, n, h = q.shape
    on_gpu = platform == "gpu"
    if _cudnn_impl(packed, q.dtype, platform) == "cudnn":
        real = kv_segment != 0
        lengths = jnp.sum(real, axis=1).astype(jnp.int32)
        right_padded = jnp.all(real == (jnp.arange(t)[None] < lengths[:, None]), axis=1)
        out = jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(h), is_causal=True,
                                           key_value_seq_lengths=jnp.maximum(lengths, 1),
                                           implementation="cudnn" if on_gpu else "xla")
        return jnp.where(right_padded[:, None, None, None], out, jnp.nan).astype(q.dtype)
    from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

    g = n // k.shape[2]
    kk, vv = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    bs, tp = triton_block(t)
    # The kernel takes one segment array for queries and keys: in self-attention they are the same array.
    qp, kk, vv, seg = _pad_tokens(tp, _next_power_of_two(h), q, kk, vv, q_segment)
    out = pallas_gpu.mha(qp, kk, vv, seg, sm_scale=1.0 / math.sqrt(h), causal=True,
                         block_sizes=pallas_gpu.BlockSizes(block_q=bs, block_k=bs, block_q_dkv=bs, block_kv_dkv=bs,
                                                               block_q_dq=bs, block_kv_dq=bs),
                         interpret=not on_gpu)
    return out[:, :t, :, :h].astype(q.dtype)
