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
  splash     the Pallas TPU splash-attention kernel (causal mask + segment ids, GQA as a vmap of the MQA kernel
             over KV heads) under `shard_map` over the active mesh (Mosaic kernels are not auto-partitioned),
             with the kernel's own backward. Needs T == S, a multiple of 128, and row-index positions. On CPU it
             runs in Pallas interpret mode (tests).
  cudnn      GPU: `jax.nn.dot_product_attention(implementation="cudnn")` (causal + key lengths) for rows
             without segment ids, which must then be right-padded (tokens first, as the training pipeline and
             score_ppl build them; a left-padded row yields NaN rather than a silently wrong value); packed
             rows go to the Pallas GPU (Triton) flash kernel, which takes segment ids. On CPU both run in their
             reference modes (XLA / interpret) so the argument mapping is tested.
  auto       per platform of the active mesh (the compile target, so a TPU topology compiled on a CPU host
             picks splash): TPU -> splash (blockwise where splash cannot express the mask), GPU -> cudnn
             (blockwise likewise), CPU -> dense for small T x S, blockwise beyond.

Einsum letters: B batch, T queries, S keys, N query heads, K key/value heads, G = N // K, H head dim.
"""

from __future__ import annotations

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
    """A registered attention backend: `fn(call: AttentionCall) -> [B, T, N, H]` in q's dtype; `kernel`: it needs
    row-index positions and T == S, so a call it cannot express goes to `blockwise`."""

    name: str
    fn: Callable[[AttentionCall], jax.Array]
    kernel: bool = False


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, *, kernel: bool = False):
    """Decorator: adds an attention backend under `name` (then `model.attention=name`, `--attention name`)."""

    def wrap(fn):
        BACKENDS[name] = Backend(name, fn, kernel)
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


def _platform() -> str:
    """Platform of the compile target: the active mesh's devices if rules are active, else the default."""
    active = shd.active_mesh()
    if active is not None:
        return active.devices.flat[0].platform
    return jax.default_backend()


def resolve_backend(backend: str, *, t: int, s: int, index_positions: bool, packed: bool = True,
                    platform: str | None = None) -> str:
    """The concrete backend for a call of T queries over S keys (static: decided at trace time).

    index_positions: positions are the row index (training, scoring, an empty-cache prefill); splash and
    cudnn need it (and T == S). Explicit choices that cannot express the call fall back to blockwise.
    """
    if backend not in backend_choices():
        raise ValueError(f"attention={backend!r}; expected one of {backend_choices()}")
    if t == 1:  # a decode step: its scores are [1, S], nothing to save, and no kernel beats one dot product
        return "dense"
    platform = platform or _platform()
    kernel_ok = index_positions and t == s
    if backend == "auto":
        if platform == "tpu":
            backend = "splash" if kernel_ok and t % 128 == 0 else "blockwise"
        elif platform in ("gpu", "cuda", "rocm"):
            backend = "cudnn" if kernel_ok else "blockwise"
        else:
            backend = "dense" if t * s <= _CPU_DENSE_MAX_SCORES else "blockwise"
    if BACKENDS[backend].kernel and not kernel_ok:
        backend = "blockwise"
    return backend


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
    packed: static; False promises every segment id is 0 or 1 (padding only, no packed examples), which lets
    the cudnn backend use cuDNN itself.
    Returns [B, T, N, H] in q's dtype; scores and softmax statistics in float32.
    """
    if kv_layout not in ("BSKH", "BKSH"):
        raise ValueError(f"kv_layout={kv_layout!r}; expected 'BSKH' or 'BKSH'")
    b, t, n, h = q.shape
    s = k.shape[kv_layout.index("S")]
    index_positions = q_pos is None and kv_pos is None
    name = resolve_backend(backend, t=t, s=s, index_positions=index_positions)
    call = AttentionCall(q, k, v, q_segment.astype(jnp.int32), kv_segment.astype(jnp.int32), q_pos, kv_pos,
                         kv_layout, packed, block_q, block_k)
    return BACKENDS[name].fn(call)


@register_backend("splash", kernel=True)
def _splash(c: AttentionCall) -> jax.Array:
    k, v = c.kv_as("BSKH")
    return splash_attention(c.q, k, v, c.q_segment, c.kv_segment)


@register_backend("cudnn", kernel=True)
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


def splash_attention(q, k, v, q_segment, kv_segment, *, block: int | None = None) -> jax.Array:
    """Pallas TPU splash attention. q: [B, T, N, H]; k, v: [B, T, K, H]; segments [B, T]. Returns [B, T, N, H].

    Padding (segment 0) queries attend padding keys here (the kernel compares segment ids only); their outputs
    are ignored downstream like every backend's.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, n, h = q.shape
    block = block or DEFAULT_BLOCK
    interpret = _platform() != "tpu"

    def local(q, k, v, q_segment, kv_segment):
        lb, lt, ln, _ = q.shape
        lk = k.shape[2]
        g = ln // lk
        bs = next((c for c in (block, 512, 256, 128) if c <= lt and lt % c == 0), lt)
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
        return local(q, k, v, q_segment, kv_segment)
    mesh, rules = active
    qkv_spec, seg_spec = _head_specs(mesh, rules, q, k)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec, seg_spec),
                       out_specs=qkv_spec, check_vma=False)
    return fn(q, k, v, q_segment, kv_segment)


# --- cuDNN / Pallas GPU flash (GPU) -----------------------------------------------------------------------------
def cudnn_attention(q, k, v, q_segment, kv_segment, *, packed: bool = True) -> jax.Array:
    """GPU flash attention. q: [B, T, N, H]; k, v: [B, T, K, H]; segments [B, T] (0 = padding).

    packed=False (the caller passed no segment ids, so every segment id is 0 or 1): cuDNN with
    `is_causal` and per-row key lengths = the number of non-padding tokens; such rows must be right-padded (a
    row that is not yields NaN). packed=True: the Pallas GPU flash kernel with segment ids (GQA by repeating the
    KV heads). Off a GPU both run in reference modes (XLA / Pallas interpret) so the mapping is testable.
    """
    b, t, n, h = q.shape
    on_gpu = _platform() in ("gpu", "cuda", "rocm")
    if on_gpu and q.dtype == jnp.float32:
        packed = True  # cuDNN's fused attention takes 16-bit inputs only; the Pallas kernel takes float32
    if packed and t % min(128, t):
        seq = _index_positions(b, t)  # the Pallas GPU kernel wants whole 128-token blocks
        return blockwise_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), q_segment, kv_segment, seq,
                                   seq, block_q=DEFAULT_BLOCK, block_k=DEFAULT_BLOCK)
    if not packed:
        lengths = jnp.sum(kv_segment != 0, axis=1).astype(jnp.int32)
        right_padded = jnp.all((kv_segment != 0) == (jnp.arange(t)[None] < lengths[:, None]), axis=1)
        out = jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(h), is_causal=True,
                                           key_value_seq_lengths=lengths,
                                           implementation="cudnn" if on_gpu else "xla")
        return jnp.where(right_padded[:, None, None, None], out, jnp.nan).astype(q.dtype)
    from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

    g = n // k.shape[2]
    kk, vv = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    bs = min(128, t)
    # The kernel takes one segment array for queries and keys: in self-attention they are the same array.
    out = pallas_gpu.mha(q, kk, vv, q_segment, sm_scale=1.0 / math.sqrt(h), causal=True,
                         block_sizes=pallas_gpu.BlockSizes(block_q=bs, block_k=bs, block_q_dkv=bs, block_kv_dkv=bs,
                                                               block_q_dq=bs, block_kv_dq=bs),
                         interpret=not on_gpu)
    return out.astype(q.dtype)
