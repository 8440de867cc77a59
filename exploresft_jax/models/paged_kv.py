"""Device side of the paged KV cache (the host side, page allocation, is `sampling.paged`).

A page pool holds one layer's K or V as [P, K, page_size, H] (the stack over layers [L, P, K, page_size, H]); row
b's cache entry t lives on page table[b, t // page_size] at offset t % page_size, table [B, W] int32 the rows'
page tables. Entries past a row's length are never read unmasked, so unused table slots may name any page.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from exploresft_jax.models.attention import attend, ragged_visibility


def write_token(pages: jax.Array, new: jax.Array, table: jax.Array, position: jax.Array, live: jax.Array,
                layer=None) -> jax.Array:
    """pages [P, K, page_size, H] (one layer's K or V) with new[b] [K, H] written at entry position[b] of row b,
    i.e. page table[b, position // page_size], offset position % page_size, for the rows where live[b]; rows not
    live write nothing. table: [B, W] int32; position: [B] int32; live: [B] bool. The page must be reserved.
    layer: pages is then the stack [L, P, K, page_size, H] and layer `layer` is written (in place: one scatter
    into the stack, as the dense decode step writes its cache)."""
    page_size = pages.shape[-2]
    pid = jnp.take_along_axis(table, (position // page_size)[:, None], axis=1)[:, 0]
    pid = jnp.where(live, pid, pages.shape[-4])  # out of range: dropped
    new = new.astype(pages.dtype)
    if layer is None:
        return pages.at[pid, :, position % page_size].set(new, mode="drop")
    return pages.at[layer, pid, :, position % page_size].set(new, mode="drop")


def gather_rows(pages: jax.Array, table: jax.Array) -> jax.Array:
    """[B, K, W * page_size, H]: row b's entries [0, W * page_size) from its pages table[b] [W], in order."""
    x = pages[table]  # [B, W, K, page_size, H]
    b, w, k, p, h = x.shape
    return x.transpose(0, 2, 1, 3, 4).reshape(b, k, w * p, h)


def attend_pages(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, table: jax.Array, lengths: jax.Array, *,
                 backend: str = "auto") -> jax.Array:
    """Decode attention of q [B, 1, N, H] (row b's token at position lengths[b], its K/V already written) over row
    b's entries [0, lengths[b]] on its pages: k_pages / v_pages [P, K, page_size, H] (one layer), table [B, W]
    int32. Returns [B, 1, N, H] in q's dtype. Reads W x page_size entries per row (masked past its length)."""
    k, v = gather_rows(k_pages, table), gather_rows(v_pages, table)
    return attend(q, k, v, backend=backend, kv_layout="BKSH", **ragged_visibility(lengths, k.shape[2]))
