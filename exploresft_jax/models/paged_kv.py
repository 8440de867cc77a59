"""Device side of the paged KV cache (the host side, page allocation, is `sampling.paged`).

Pools are per batch device: one layer's K or V is [G, P, K, page_size, H], G groups (the batch devices, the
axis sharded over them) of P pages each, and the stack over layers is [G, L, P, K, page_size, H] (the group
axis first, so a layer's pages are indexed in place). The B rows split evenly and in order over the groups: row
b is in group b // (B / G), and its cache entry t lives on that group's page table[b, t // page_size] at offset
t % page_size, table [B, W] int32 the rows' page tables (page ids local to the group). Every read and write is a
gather or scatter batched over the group axis, so a device touches only its own pages (no pool is gathered
across devices). Entries past a row's length are never read unmasked, so unused table slots may name any page.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from exploresft_jax.models.attention import MASK_VALUE, attend, ragged_visibility


def _split(x: jax.Array, groups: int) -> jax.Array:
    """[B, ...] -> [G, B / G, ...] (rows in order over the groups)."""
    return x.reshape(groups, x.shape[0] // groups, *x.shape[1:])


def write_token(pages: jax.Array, new: jax.Array, table: jax.Array, position: jax.Array, live: jax.Array,
                layer=None) -> jax.Array:
    """pages [G, P, K, page_size, H] (one layer's K or V) with new[b] [K, H] written at entry position[b] of row b,
    i.e. page table[b, position // page_size] of row b's group, offset position % page_size, for the rows where
    live[b]; rows not live write nothing. table: [B, W] int32; position: [B] int32; live: [B] bool. The page
    must be reserved. layer: pages is then the stack [G, L, P, K, page_size, H] and layer `layer` is written
    (in place: one scatter into the stack, as the dense decode step writes its cache)."""
    g, num_pages, page_size = pages.shape[0], pages.shape[-4], pages.shape[-2]
    pid = jnp.take_along_axis(table, (position // page_size)[:, None], axis=1)[:, 0]
    pid = jnp.where(live, pid, num_pages)  # out of range: dropped
    lead = () if layer is None else (layer,)

    def one(p, i, o, x):
        return p.at[lead + (i, slice(None), o)].set(x, mode="drop")

    return jax.vmap(one)(pages, _split(pid, g), _split(position % page_size, g), _split(new.astype(pages.dtype), g))


def gather_rows(pages: jax.Array, table: jax.Array, layer=None) -> jax.Array:
    """[B, K, W * page_size, H]: row b's entries [0, W * page_size) from its group's pages table[b] [W], in order.
    pages: [G, P, K, page_size, H], or the stack [G, L, P, K, page_size, H] with `layer` given."""
    lead = () if layer is None else (layer,)
    x = jax.vmap(lambda p, t: p[lead + (t,)])(pages, _split(table, pages.shape[0]))  # [G, B/G, W, K, page, H]
    _, _, w, k, p, h = x.shape
    return x.reshape(-1, w, k, p, h).transpose(0, 2, 1, 3, 4).reshape(-1, k, w * p, h)


BLOCK = 2048  # entries of each row read per step of `attend_pages`' online softmax (whole pages)


def attend_pages(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, table: jax.Array, lengths: jax.Array, *,
                 layer=None, block: int | None = None) -> jax.Array:
    """Decode attention of q [B, 1, N, H] (row b's token at position lengths[b], its K/V already written) over row
    b's entries [0, lengths[b]] on its pages: k_pages / v_pages [G, P, K, page_size, H] (one layer; or the stacks
    [G, L, P, K, page_size, H] with `layer`), table [B, W] int32. Returns [B, 1, N, H] in q's dtype; scores and
    softmax statistics in float32.

    block: entries per row read at once (rounded down to whole pages, at least one; None: `BLOCK`). A table of
    at most that many entries is gathered whole and attended with one softmax; a longer one is read block by
    block with an online softmax (running max, sum and weighted values, as flash-decoding does), over the blocks
    up to the longest row's length only. So the gathered K/V held at once are [B, K, block, H], not the whole
    [B, K, W x page_size, H] window: at 512 rows of 17,920 entries (Qwen2.5-Math-1.5B on one H100) that window
    is 8.8 GiB (K and V) per layer and step."""
    page, w = k_pages.shape[-2], table.shape[1]
    per = max(1, (BLOCK if block is None else block) // page)  # pages per block
    if w <= per:
        k, v = gather_rows(k_pages, table, layer), gather_rows(v_pages, table, layer)
        return attend(q, k, v, backend="dense", kv_layout="BKSH", **ragged_visibility(lengths, k.shape[2]))
    b, _, n, h = q.shape
    kh = k_pages.shape[-3]
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
