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

import jax
import jax.numpy as jnp

from exploresft_jax.models.attention import attend, ragged_visibility


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


def attend_pages(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, table: jax.Array, lengths: jax.Array, *,
                 layer=None, backend: str = "auto") -> jax.Array:
    """Decode attention of q [B, 1, N, H] (row b's token at position lengths[b], its K/V already written) over row
    b's entries [0, lengths[b]] on its pages: k_pages / v_pages [G, P, K, page_size, H] (one layer; or the stacks
    [G, L, P, K, page_size, H] with `layer`), table [B, W] int32. Returns [B, 1, N, H] in q's dtype. Reads
    W x page_size entries per row (masked past its length)."""
    k, v = gather_rows(k_pages, table, layer), gather_rows(v_pages, table, layer)
    return attend(q, k, v, backend=backend, kv_layout="BKSH", **ragged_visibility(lengths, k.shape[2]))
