"""Device side of the paged KV cache (the host side, page allocation, is `sampling.paged`).

Pools are per batch device. The stack over layers, one for K and one for V, is [G, K, L, P, page_size, H]: G
groups (the batch devices; the axis sharded over them), the KV heads (split over the tensor axis like the dense
caches), then L layers of P pages each; one layer's pool alone is [G, K, P, page_size, H]. The B rows split
evenly and in order over the groups: row b is in group b // (B / G), and its cache entry t lives on that group's
page table[b, t // page_size] at offset t % page_size, table [B, W] int32 the rows' page tables (page ids local
to the group, the same page in every layer). Every read and write is batched over the group axis, so a device
touches only its own pages (no pool is gathered across devices). Entries past a row's length are never read
unmasked, so unused table slots may name any page.

Why the layers sit inside the heads: a device's stack [K, L, P, page_size, H] is then also [K, L x P, page_size,
H] (a free reshape), the layout of the Pallas TPU paged-attention kernel, with layer i's page p at page
i x P + p. The kernel then reads the pages it needs straight out of the stack (no copy of a layer's pool first).

Decode attention (`attend_pages`) runs that kernel for a TPU compile target (`kernel_attend_pages`) and the
gather-and-online-softmax reference elsewhere (CPU, GPU); both see exactly entries [0, lengths[b]] of row b.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from exploresft_jax import sharding as shd
from exploresft_jax.models.attention import MASK_VALUE, attend, compile_target, ragged_visibility

# logical axes of a page-pool stack [G, K, L, P, page_size, H]: a pool per batch device, split over the KV heads
POOL_AXES = ("act_batch", "kv_heads", None, None, None, None)


def _split(x: jax.Array, groups: int) -> jax.Array:
    """[B, ...] -> [G, B / G, ...] (rows in order over the groups)."""
    return x.reshape(groups, x.shape[0] // groups, *x.shape[1:])


def _as_stack(pages: jax.Array, layer) -> tuple[jax.Array, object]:
    """(the stack [G, K, L, P, page_size, H], the layer index): one layer's pool [G, K, P, page_size, H] (layer
    None) becomes a stack of one layer (a free reshape)."""
    return (pages[:, :, None], 0) if layer is None else (pages, layer)


def write_token(pages: jax.Array, new: jax.Array, table: jax.Array, position: jax.Array, live: jax.Array,
                layer=None) -> jax.Array:
    """pages [G, K, P, page_size, H] (one layer's K or V) with new[b] [K, H] written at entry position[b] of row
    b, i.e. page table[b, position // page_size] of row b's group, offset position % page_size, for the rows
    where live[b]; rows not live write nothing. table: [B, W] int32; position: [B] int32; live: [B] bool. The
    page must be reserved. layer: pages is then the stack [G, K, L, P, page_size, H] and layer `layer` (an int or
    a traced int32 scalar) is written (in place: one scatter into the stack, as the dense decode step writes its
    cache)."""
    stack, i = _as_stack(pages, layer)
    g, num_pages, page_size = stack.shape[0], stack.shape[3], stack.shape[4]
    pid = jnp.take_along_axis(table, (position // page_size)[:, None], axis=1)[:, 0]
    pid = jnp.where(live, pid, num_pages)  # out of range: dropped

    def one(p, j, o, x):  # p [K, L, P, page, H]; j, o [B/G]; x [B/G, K, H] -> the indexed [K, B/G, H]
        return p.at[:, i, j, o].set(x.transpose(1, 0, 2), mode="drop")

    out = jax.vmap(one)(stack, _split(pid, g), _split(position % page_size, g), _split(new.astype(stack.dtype), g))
    return out[:, :, 0] if layer is None else out


def gather_rows(pages: jax.Array, table: jax.Array, layer=None) -> jax.Array:
    """[B, K, W * page_size, H]: row b's entries [0, W * page_size) from its group's pages table[b] [W], in order.
    pages: [G, K, P, page_size, H], or the stack [G, K, L, P, page_size, H] with `layer` given."""
    stack, i = _as_stack(pages, layer)
    x = jax.vmap(lambda p, t: p[:, i, t])(stack, _split(table, stack.shape[0]))  # [G, K, B/G, W, page, H]
    g, k, n, w, p, h = x.shape
    return x.transpose(0, 2, 1, 3, 4, 5).reshape(g * n, k, w * p, h)


BLOCK = 2048  # entries of each row read per step of the reference's online softmax (whole pages)
KERNEL_BLOCK = 512  # entries of a row the TPU kernel loads per step (whole pages)
IMPLS = ("auto", "kernel", "reference")


def attend_pages(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, table: jax.Array, lengths: jax.Array, *,
                 layer=None, block: int | None = None, impl: str = "auto") -> jax.Array:
    """Decode attention of q [B, 1, N, H] (row b's token at position lengths[b], its K/V already written) over row
    b's entries [0, lengths[b]] on its pages: k_pages / v_pages [G, K, P, page_size, H] (one layer; or the stacks
    [G, K, L, P, page_size, H] with `layer`), table [B, W] int32. Returns [B, 1, N, H] in q's dtype; scores and
    softmax statistics in float32.

    impl: "kernel" (`kernel_attend_pages`: the Pallas TPU kernel, each row reading only its own pages up to its
    length), "reference" (below), or "auto": the kernel for a TPU compile target (the active mesh's devices,
    else the default backend), the reference elsewhere.

    The reference gathers each row's pages. block: entries per row read at once (rounded down to whole pages, at
    least one; None: `BLOCK`). A table of at most that many entries is gathered whole and attended with one
    softmax; a longer one is read block by block with an online softmax (running max, sum and weighted values,
    as flash-decoding does), over the blocks up to the longest row's length only. So the gathered K/V held at
    once are [B, K, block, H], not the whole [B, K, W x page_size, H] window: at 512 rows of 17,920 entries
    (Qwen2.5-Math-1.5B on one H100) that window is 8.8 GiB (K and V) per layer and step."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        impl = "kernel" if compile_target()[0] == "tpu" else "reference"
    if impl == "kernel":
        return kernel_attend_pages(q, k_pages, v_pages, table, lengths, layer=layer)
    page, w = k_pages.shape[-2], table.shape[1]
    per = max(1, (BLOCK if block is None else block) // page)  # pages per block
    if w <= per:
        k, v = gather_rows(k_pages, table, layer), gather_rows(v_pages, table, layer)
        return attend(q, k, v, backend="dense", kv_layout="BKSH", **ragged_visibility(lengths, k.shape[2]))
    b, _, n, h = q.shape
    kh = k_pages.shape[1]
    blocks = -(-w // per)
    table = jnp.pad(table, ((0, 0), (0, blocks * per - w)))  # page 0 in the padding: read, never visible
    qg = q.reshape(b, kh, n // kh, h)
    scale = 1.0 / math.sqrt(h)

    def step(i, carry):
        m, l, acc = carry  # [B, K, G] running max and sum, [B, K, G, H] weighted values (float32)
        pages = jax.lax.dynamic_slice_in_dim(table, i * per, per, axis=1)
        k = gather_rows(k_pages, pages, layer).astype(q.dtype)  # [B, K, per x page, H]
        v = gather_rows(v_pages, pages, layer).astype(q.dtype)
        scores = jnp.einsum("BKGH,BKSH->BKGS", qg, k, preferred_element_type=jnp.float32) * scale
        seen = (i * per * page + jnp.arange(per * page)[None, :] <= lengths[:, None])[:, None, None, :]
        scores = jnp.where(seen, scores, MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
        p = jnp.where(seen, jnp.exp(scores - m_new[..., None]), 0.0)
        corr = jnp.exp(m - m_new)
        pv = jnp.einsum("BKGS,BKSH->BKGH", p.astype(q.dtype), v, preferred_element_type=jnp.float32)
        return m_new, l * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + pv

    stats = qg.shape[:-1]
    init = (jnp.full(stats, MASK_VALUE, jnp.float32), jnp.zeros(stats, jnp.float32), jnp.zeros(qg.shape, jnp.float32))
    used = jnp.minimum(jnp.max(lengths) // (per * page) + 1, blocks)  # blocks holding a visible entry of some row
    _, l, acc = jax.lax.fori_loop(0, used, step, init)
    return (acc / l[..., None]).reshape(b, 1, n, h).astype(q.dtype)  # l > 0: entry 0 is always visible


def compute_block_pages(width: int, page_size: int, entries: int = KERNEL_BLOCK) -> int:
    """Pages the TPU kernel loads per step for a table of `width` pages: the largest divisor of the width (the
    kernel's requirement) holding at most `entries` entries, at least one page."""
    return max(d for d in range(1, width + 1) if width % d == 0 and (d == 1 or d * page_size <= entries))


def kernel_attend_pages(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, table: jax.Array,
                        lengths: jax.Array, *, layer=None, kernel: Callable | None = None) -> jax.Array:
    """`attend_pages` by the Pallas TPU paged-attention kernel (`jax.experimental.pallas.ops.tpu.paged_attention`).
    Arguments and result as `attend_pages`.

    Per row and KV head the kernel loads the row's pages from HBM in blocks of `compute_block_pages` pages
    (double-buffered), only the blocks below the row's own length, with an online softmax in float32: a short
    row among long ones reads its own few pages, not the longest row's window. Layer i of a stack is the kernel's
    pool [K, L x P, page_size, H] (a free reshape of the device's stack) at page ids table + i x P.

    Under `sharding.use_rules` the kernel runs in a shard_map over the pools' sharding (`POOL_AXES`: rows and
    pools over the batch devices, the KV heads and their query heads over the tensor axis), so each device reads
    only its own pages; without it, on each group's pool in turn.

    kernel: a function with the Pallas kernel's contract, `kernel(q [B, N, H] (already scaled by 1 / sqrt(H)),
    k_pages [K, P', page_size, H], v_pages, lengths [B] int32 (entries < lengths visible), page_indices [B, W]
    int32, *, pages_per_compute_block) -> [B, N, H]`. None: the Pallas kernel, which compiles for a TPU only
    (for any other compile target a one-line ValueError); a reference of the same contract checks the wiring on
    CPU."""
    if kernel is None:
        platform, source = compile_target()
        if platform != "tpu":
            raise ValueError(f"the paged-attention kernel needs a TPU compile target; this call compiles for "
                             f"{platform} ({source}); use attend_pages(impl='reference')")
        from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention as kernel
    ks, i = _as_stack(k_pages, layer)
    vs, _ = _as_stack(v_pages, layer)
    per = compute_block_pages(table.shape[1], ks.shape[4])
    scale = 1.0 / math.sqrt(q.shape[-1])

    def one_pool(q, ks, vs, table, lengths, i):  # one group: q [n, 1, N, H], ks / vs [K, L, P, page, H]
        k, l, p, page, h = ks.shape
        # the query scaled in float32 (the kernel computes its scores in float32 from it)
        out = kernel(q[:, 0].astype(jnp.float32) * scale, ks.reshape(k, l * p, page, h),
                     vs.reshape(k, l * p, page, h), (lengths + 1).astype(jnp.int32), table + i * p,
                     pages_per_compute_block=per)
        return out[:, None].astype(q.dtype)

    def pools(q, ks, vs, table, lengths, i):  # the groups held here, each on its own rows
        g = ks.shape[0]
        q, table, lengths = _split(q, g), _split(table, g), _split(lengths, g)
        parts = [one_pool(q[j], ks[j], vs[j], table[j], lengths[j], i) for j in range(g)]
        return parts[0] if g == 1 else jnp.concatenate(parts)

    i = jnp.asarray(i, jnp.int32)
    active = shd.active_rules()
    if active is None:
        return pools(q, ks, vs, table, lengths, i)
    mesh, rules = active
    pool_spec = shd.logical_to_spec(POOL_AXES, rules, mesh, ks.shape)
    batch, heads = (*pool_spec, None, None)[:2]  # a spec may leave trailing axes out
    P = jax.sharding.PartitionSpec
    q_spec = P(batch, None, heads, None)
    fn = jax.shard_map(pools, mesh=mesh, in_specs=(q_spec, pool_spec, pool_spec, P(batch, None), P(batch), P()),
                       out_specs=q_spec, check_vma=False)
    return fn(q, ks, vs, table, lengths, i)
