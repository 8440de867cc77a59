"""Continuous-batching decode engine behind `Sampler(..., engine="continuous")`.

A fixed number B of decode slots (rows) each hold one sample at a time. Samples are queued in output order
(prompt-major: prompt 0's n samples first) and a slot is refilled with the next queued sample as soon as its
sample ends (a stop id or its own max_new_tokens), so the decode batch stays full until the queue is empty.

Pieces (all jitted, shapes bucketed so few programs are compiled):

* Prompt pool (prefix sharing). Each prompt is prefilled once, right-padded to a power-of-two length, into an
  entry of a small device pool (its K/V [L, K, Lp, H], the last hidden state and its length). The n samples of
  a prompt copy that entry into their slots when they start, which may be at different times; the entry is
  freed once the prompt's last sample has started. Samples are taken from the queue head, so at any time at
  most one prompt is partially started and the pool needs 1 + ceil(B / n) entries (cost: that many prompt
  caches of the longest prompt bucket, next to the B slot caches). Several prompts needed by one refill are
  prefilled together (prompt count and length bucketed to powers of two).
* Insert. Copies pool entries into the refilled slots' caches (slots [0, Lp) of the slot; per-slot caches
  are left-aligned: a slot's token t sits at cache index t and RoPE position t), samples each new sample's
  first token from the prompt's last hidden state, and resets the slot's counters (length, generated count,
  per-sample limit, output row).
* Decode chunk. A `lax.while_loop` of at most `chunk` steps that exits early once enough slots are free to be
  worth refilling (while the queue is non-empty), or, with an empty queue, once at most half the slots are
  live (the live rows are then compacted into a smaller batch bucket, so a long tail decodes with few rows).
  Each step feeds every slot's last token at its own position, writes its K/V at the slot's own cache index
  (a scatter; finished slots write nothing), and attends over the first W cache entries only, W a power of
  two (at least MIN_WINDOW, at most the capacity) covering the longest live row for the whole chunk
  (`Qwen2.decode_ragged`). Cost per step therefore follows the longest live row, not the cache capacity.
  Rows shorter than the longest still read up to W (masked), except with a paged cache on a TPU, where the
  Pallas paged-attention kernel reads each row's own pages up to its length (`models.paged_kv`).
* Paged cache (`Sampler(kv_pages=...)`). The slot caches become a pool of pages on each batch device
  (`sampling.paged`, `models.paged_kv`), serving the slots on that device: a slot holds the pages its row has
  reached, so memory follows the tokens actually held rather than slots x capacity. Before each chunk every live
  slot is grown to cover the chunk, and when a device's pool runs short its newest samples are preempted (pages
  returned, output rows cleared, samples back at the head of the queue); then a sample starts where a device
  with a free slot has pages left for its prompt and first chunk. Restarted samples draw the same tokens
  (see Randomness), so the paged and dense engines give the same samples. Slots never change device, so a
  compaction keeps each device's live rows on it (and waits while one device has more than its share). The
  decode step reads each row's pages: on a TPU through the Pallas paged-attention kernel (a row's own pages up
  to its length), elsewhere through a gather batched over the devices (every row up to the same window W).

Randomness: sample (prompt i, sample j) is output row r = i * n + j and draws its t-th token with the key
fold_in(fold_in(key, r), t), exactly as the static engine does, so a sample's tokens depend only on (key, i,
j) and the model, never on its slot, its start time or the other samples; the two engines agree token for
token (up to float reassociation between different batch and window shapes).

Prefix sharing costs nothing extra in compute (one prefill per prompt, like the static engine); keeping the
prefilled K/V in the pool until the prompt's last sample starts was chosen over re-prefilling because
refills usually start only one or a few samples at a time, so a prompt's n samples nearly always start in
different refills and re-prefilling would cost up to n prefills per prompt.

Outputs are written straight into [R, max_new] buffers on the device (row r, column t), fetched once at
the end; each chunk only returns the slots' live flags and lengths to the host.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from exploresft_jax import sharding as shd
from exploresft_jax.models import qwen2
from exploresft_jax.models.paged_kv import POOL_AXES
from exploresft_jax.models.qwen2 import KVCache
from exploresft_jax.sampling.buckets import next_pow2
from exploresft_jax.sampling.paged import PageAllocator, keep_for_compaction, require_row_fits
from exploresft_jax.sampling.strategies import SamplingConfig, sample_tokens

MIN_WINDOW = 64  # the smallest attention window (cache entries read per decode step)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SlotState:
    """Carry of the continuous engine.

    k, v: [L, B, K, C, H] per-slot caches (left-aligned: token t of a slot's sequence at index t), or, with a
    paged cache (`Sampler(kv_pages=...)`), page pools [G, K, L, P, page_size, H]: one pool of P pages per batch
    device, shared by the slots on that device (`models.paged_kv`).
    table: [B, W] int32 the slots' page tables (`sampling.paged`; W = 0 without pages).
    last: [B] int32 token fed next; length: [B] int32 cache entries filled (= RoPE position of `last`);
    gen: [B] int32 tokens generated by the slot's sample (= its next output column); limit: [B] int32 the
    sample's max_new_tokens; live: [B] bool; row: [B] int32 output row (= the sample's key id).
    out_*: [R, M] outputs by row; out_len: [R] int32; out_stop: [R] bool.
    """

    k: jax.Array
    v: jax.Array
    table: jax.Array
    last: jax.Array
    length: jax.Array
    gen: jax.Array
    limit: jax.Array
    live: jax.Array
    row: jax.Array
    out_tokens: jax.Array
    out_logprobs: jax.Array
    out_entropy: jax.Array
    out_len: jax.Array
    out_stop: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PromptPool:
    """Prefilled prompts waiting for their samples to start. k, v: [L, Q, K, Lp, H]; hidden: [Q, D] (the
    last prompt token's final hidden state); length: [Q] int32 prompt lengths."""

    k: jax.Array
    v: jax.Array
    hidden: jax.Array
    length: jax.Array


_SLOT_FIELDS = ("last", "length", "gen", "limit", "live", "row")


def _paged(st: SlotState) -> bool:
    return st.table.shape[1] > 0


def _capacity(st: SlotState) -> int:
    """Cache entries a slot can hold: its dense cache's length, or its page table's pages x page_size."""
    return st.k.shape[-2] * st.table.shape[1] if _paged(st) else st.k.shape[3]


def _constrain(st: SlotState) -> SlotState:
    """Pins the per-slot arrays to the batch sharding (a no-op outside `use_rules`)."""
    axes = POOL_AXES if _paged(st) else KVCache.AXES
    cache = lambda x: shd.constrain(x, axes)  # noqa: E731
    row = lambda x: shd.constrain(x, ("act_batch",) + (None,) * (x.ndim - 1))  # noqa: E731
    return dataclasses.replace(st, k=cache(st.k), v=cache(st.v), table=row(st.table),
                               **{f: row(getattr(st, f)) for f in _SLOT_FIELDS})


def _sample(hidden, model: qwen2.Qwen2, key, rows, cols, cfg: SamplingConfig, head_t=None):
    """Token, log-prob and entropy for rows with output ids `rows` at columns `cols` (keys as the static
    engine: fold_in(fold_in(key, row), col)). head_t: `DecodeWeights.head_t`."""
    logits = model.step_logits(hidden, head_t)
    keys = jax.vmap(lambda r, c: jax.random.fold_in(jax.random.fold_in(key, r), c))(rows, cols)
    return sample_tokens(logits, keys, cfg)


def _emit(st: SlotState, live, tok, logp, ent, stop_ids) -> tuple[SlotState, jax.Array]:
    """Writes each live slot's token at (row, gen) of the outputs; returns the state with gen advanced and
    the [B] bool of slots whose sample ended with this token (live ones only)."""
    r_out = st.out_tokens.shape[0]
    out_row = jnp.where(live, st.row, r_out)  # out of range: dropped
    gen1 = st.gen + live.astype(jnp.int32)
    hit = live & jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
    ended = hit | (live & (gen1 >= st.limit))
    st = dataclasses.replace(
        st,
        gen=gen1,
        out_tokens=st.out_tokens.at[out_row, st.gen].set(tok, mode="drop"),
        out_logprobs=st.out_logprobs.at[out_row, st.gen].set(logp, mode="drop"),
        out_entropy=st.out_entropy.at[out_row, st.gen].set(ent, mode="drop"),
        out_len=st.out_len.at[out_row].set(gen1, mode="drop"),
        out_stop=st.out_stop.at[out_row].set(hit, mode="drop"),
    )
    return st, ended


@functools.lru_cache(maxsize=32)
def _init_fn(mesh, rules, cfg: qwen2.Qwen2Config, slots: int, capacity: int, rows: int, max_new: int, cache_dtype,
             pad_id: int, pool_size: int, pool_len: int, pages: int = 0, page_size: int = 0):
    """A jitted builder of the empty (SlotState, PromptPool), created directly in their shardings (the slot
    axis over the rules' batch devices, the rest replicated). Explicit output shardings, since a jit without
    array inputs would otherwise reuse the placement of whichever mesh traced it first. pages > 0: the slot
    caches are page pools of `pages` pages of `page_size` entries on each batch device (capacity a multiple of
    page_size)."""
    width = capacity // page_size if pages else 0
    groups = shd.mesh_axes_size(mesh, rules.lookup("act_batch"))
    kv_shape = ((groups, cfg.num_kv_heads, cfg.num_layers, pages, page_size, cfg.head_dim) if pages
                else (cfg.num_layers, slots, cfg.num_kv_heads, capacity, cfg.head_dim))

    def build():
        zi = jnp.zeros((slots,), jnp.int32)
        st = SlotState(k=jnp.zeros(kv_shape, cache_dtype), v=jnp.zeros(kv_shape, cache_dtype),
                       table=jnp.zeros((slots, width), jnp.int32), last=zi, length=zi, gen=zi, limit=zi + 1,
                       live=zi.astype(bool), row=zi, out_tokens=jnp.full((rows, max_new), pad_id, jnp.int32),
                       out_logprobs=jnp.zeros((rows, max_new), jnp.float32),
                       out_entropy=jnp.zeros((rows, max_new), jnp.float32),
                       out_len=jnp.zeros((rows,), jnp.int32), out_stop=jnp.zeros((rows,), bool))
        pc = KVCache.zeros(cfg, pool_size, pool_len, cache_dtype)
        pool = PromptPool(k=pc.k, v=pc.v, hidden=jnp.zeros((pool_size, cfg.hidden_size), qwen2.dtype_of(cfg.dtype)),
                          length=jnp.ones((pool_size,), jnp.int32))
        return st, pool

    spec = lambda axes, shape: NamedSharding(mesh, shd.logical_to_spec(axes, rules, mesh, shape))  # noqa: E731
    cache_sh = spec(POOL_AXES if pages else KVCache.AXES, kv_shape)
    row_sh, rep = spec(("act_batch",), (slots,)), shd.replicated(mesh)
    st_sh = SlotState(k=cache_sh, v=cache_sh, table=spec(("act_batch", None), (slots, width)),
                      **{f: row_sh for f in _SLOT_FIELDS}, out_tokens=rep, out_logprobs=rep, out_entropy=rep,
                      out_len=rep, out_stop=rep)
    pool_sh = spec(KVCache.AXES, (cfg.num_layers, pool_size, cfg.num_kv_heads, pool_len, cfg.head_dim))
    return jax.jit(build, out_shardings=(st_sh, PromptPool(k=pool_sh, v=pool_sh, hidden=rep, length=rep)))


def _take_rows(dst: jax.Array, src: jax.Array, src_row: jax.Array) -> jax.Array:
    """dst [L, N, K, S, H] with row j's first s entries replaced by src[:, src_row[j]] (src [L, M, K, s, H],
    s <= S) where src_row[j] >= 0, unchanged elsewhere: prompt caches copied into decode rows.

    Written as a per-row select over dst's own row axis rather than a scatter at row indices: with the rows
    sharded over the batch devices, a scatter into them is lowered (TPU) with a full-size temporary copy of dst,
    while the select updates each device's rows in place and only gathers the (prompt-length) source rows.
    One layer at a time (a loop carrying dst, updated in place), so the gathered rows are one layer's [N, K, s,
    H], not all L layers' at once (at `grpo_tpu`'s 128 rows on a v5e-8 that was 1.9 GiB per chip of
    temporaries)."""
    n, s = dst.shape[1], src.shape[3]
    take = (src_row >= 0)[:, None, None, None]
    rows = jnp.clip(src_row, 0)
    pin = lambda x: shd.constrain(x, KVCache.AXES[1:])  # noqa: E731  (one layer's [N, K, s, H])

    def layer(i, d):
        picked = pin(jax.lax.dynamic_index_in_dim(src, i, 0, keepdims=False)[rows])
        old = pin(jax.lax.dynamic_slice(d, (i, 0, 0, 0, 0), (1, n, d.shape[2], s, d.shape[4]))[0])
        return jax.lax.dynamic_update_slice(d, jnp.where(take, picked.astype(d.dtype), old)[None], (i, 0, 0, 0, 0))

    return jax.lax.fori_loop(0, dst.shape[0], layer, dst)


def _take_pages(pages: jax.Array, table: jax.Array, src: jax.Array, entry: jax.Array, length: jax.Array
                ) -> jax.Array:
    """The page pools pages [G, K, L, P, page_size, H] with each slot j's first length[j] entries set from prompt
    cache src[:, entry[j]] (src [L, Q, K, s, H], entries [0, s)), written to the slot's pages table [N, W] in its
    group's pool (which must hold them); slots with length 0 write nothing. Whole pages are copied (a prompt's
    last page with the entries past its length, zeros of the prompt cache, which the slot overwrites as it
    generates).

    One layer at a time (a loop carrying the pools, updated in place): the prompt entries gathered for the N
    slots are then one layer's, not all L layers' at once (at 512 slots and 2k-token prompts on a v5e-8 that
    was 8 GiB per chip of temporaries), and no copy of the pools is made."""
    g, page = pages.shape[0], pages.shape[-2]
    _, _, k, s, h = src.shape
    n = entry.shape[0]
    wp = -(-s // page)
    used = jnp.arange(wp)[None, :] * page < length[:, None]
    pid = jnp.where(used, table[:, :wp], pages.shape[3])  # out of range: dropped
    split = lambda x: x.reshape(g, n // g, *x.shape[1:])  # noqa: E731  (slots in order over the groups)

    def layer(i, pools):
        x = jax.lax.dynamic_index_in_dim(src, i, 0, keepdims=False)[entry]  # [N, K, s, H]
        if wp * page != s:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, wp * page - s), (0, 0)))
        blocks = x.reshape(n, k, wp, page, h).astype(pools.dtype)  # [N, K, wp, page, H]
        # per group: its slots' blocks to pages pid [N/G, wp] of layer i of its own pool ([K, N/G, wp, page, H]
        # indexed, the KV heads first as in the pool)
        return jax.vmap(lambda p, j, b: p.at[:, i, j].set(b.transpose(1, 0, 2, 3, 4), mode="drop"))(
            pools, split(pid), split(blocks))

    return jax.lax.fori_loop(0, src.shape[0], layer, pages)


def _row_sources(n_rows: int, dst: jax.Array, src: jax.Array) -> jax.Array:
    """[n_rows] int32: for each row j, the index i with dst[i] == j (-1 if none; out-of-range dst ignored)."""
    return jnp.full((n_rows,), -1, jnp.int32).at[dst].set(src.astype(jnp.int32), mode="drop")


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnums=(2,))
def _prefill_pool(graphdef, params, pool: PromptPool, prompts, lengths, dst,
                  weights: qwen2.DecodeWeights = qwen2.DecodeWeights()) -> PromptPool:
    """Prefills right-padded prompts [P, Lp] (lengths [P]) into pool entries dst [P] (out of range: skipped).
    weights: the sampler's decode copies (`Sampler.decode_weights`; a None field: read from params)."""
    model = nnx.merge(graphdef, params)
    p, lp = prompts.shape
    mask = jnp.arange(lp)[None, :] < lengths[:, None]
    positions = jnp.clip(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    cache = KVCache.zeros(model.config, p, lp, pool.k.dtype)
    hidden, cache = model.decode(prompts, positions, cache, attn_mask=mask, cache_is_empty=True,
                                 layers=weights.layers)
    last = hidden[jnp.arange(p), lengths - 1]
    src = _row_sources(pool.k.shape[1], dst, jnp.arange(p))
    pin = lambda x: shd.constrain(x, KVCache.AXES)  # noqa: E731
    return PromptPool(k=pin(_take_rows(pin(pool.k), pin(cache.k), src)),
                      v=pin(_take_rows(pin(pool.v), pin(cache.v), src)),
                      hidden=pool.hidden.at[dst].set(last.astype(pool.hidden.dtype), mode="drop"),
                      length=pool.length.at[dst].set(lengths, mode="drop"))


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"), donate_argnums=(2,))
def _insert(graphdef, params, st: SlotState, pool: PromptPool, slots, entries, rows, limits, key, stop_ids,
            weights: qwen2.DecodeWeights = qwen2.DecodeWeights(), *, cfg: SamplingConfig) -> SlotState:
    """Starts samples (output rows `rows`, limits `limits`) in `slots` from pool `entries` (all [k]; a slot
    index out of range marks padding): copies the prompt caches and samples each first token. weights: as
    `_prefill_pool`'s (only the head is read: the first tokens come from the pool's last hidden states)."""
    model = nnx.merge(graphdef, params)
    b = st.last.shape[0]
    valid = slots < b
    tok, logp, ent = _sample(pool.hidden[entries], model, key, rows, jnp.zeros_like(rows), cfg, weights.head_t)
    new = SlotState(k=st.k, v=st.v, table=st.table, last=tok, length=pool.length[entries], gen=jnp.zeros_like(rows),
                    limit=limits, live=valid, row=rows, out_tokens=st.out_tokens, out_logprobs=st.out_logprobs,
                    out_entropy=st.out_entropy, out_len=st.out_len, out_stop=st.out_stop)
    new, ended = _emit(new, valid, tok, logp, ent, stop_ids)
    put = lambda a, x: a.at[slots].set(x, mode="drop")  # noqa: E731
    src = _row_sources(b, slots, entries)  # the pool entry each slot starts from (its [0, Lp) replaced), -1: none
    if _paged(st):
        plen = jnp.where(src >= 0, pool.length[jnp.clip(src, 0)], 0)
        take = lambda pages, p: _take_pages(pages, st.table, p, jnp.clip(src, 0), plen)  # noqa: E731
    else:
        take = lambda cache, p: _take_rows(cache, p, src)  # noqa: E731
    st = dataclasses.replace(
        new,
        k=take(st.k, pool.k),
        v=take(st.v, pool.v),
        last=put(st.last, tok), length=put(st.length, new.length), gen=put(st.gen, new.gen),
        limit=put(st.limit, limits), live=put(st.live, valid & ~ended), row=put(st.row, rows))
    return _constrain(st)


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "steps", "window"), donate_argnums=(2,))
def _decode_chunk(graphdef, params, st: SlotState, key, stop_ids, exit_free,
                  weights: qwen2.DecodeWeights = qwen2.DecodeWeights(), *, cfg: SamplingConfig, steps: int,
                  window: int) -> tuple[jax.Array, SlotState]:
    """At most `steps` decode steps; stops early (after at least one step) once at least `exit_free` slots
    are free, or when no slot is live. Every live row must have length + steps <= window. weights: as
    in `_prefill_pool`.
    Returns (steps run, state)."""
    model = nnx.merge(graphdef, params)
    b, cap = st.last.shape[0], _capacity(st)

    def cond(c):
        i, s = c
        free = b - jnp.sum(s.live.astype(jnp.int32))
        return (i < steps) & (free < b) & ((i == 0) | (free < exit_free))

    def body(c):
        i, s = c
        live = s.live
        write_at = jnp.where(live, s.length, cap)
        hidden, k, v = model.decode_ragged(s.last, s.length, write_at, s.k, s.v, window, layers=weights.layers,
                                           page_table=s.table if _paged(s) else None)
        tok, logp, ent = _sample(hidden, model, key, s.row, s.gen, cfg, weights.head_t)
        s = dataclasses.replace(s, k=k, v=v, length=s.length + live.astype(jnp.int32),
                                last=jnp.where(live, tok, s.last))
        s, ended = _emit(s, live, tok, logp, ent, stop_ids)
        return i + 1, _constrain(dataclasses.replace(s, live=live & ~ended))

    return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), st))


@jax.jit
def _compact(st: SlotState, keep) -> SlotState:
    """The state restricted to slots `keep` [B'] (a smaller batch)."""
    take = lambda x: x[keep]  # noqa: E731
    # a page pool stays as it is (the slots' page tables move with them); dense slot caches are cut down
    k, v = (st.k, st.v) if _paged(st) else (st.k[:, keep], st.v[:, keep])
    st = dataclasses.replace(st, k=k, v=v, table=take(st.table), **{f: take(getattr(st, f)) for f in _SLOT_FIELDS})
    return _constrain(st)


@dataclasses.dataclass
class ContinuousStats:
    """Counters of the last continuous run (for benchmarks and tuning)."""

    chunks: int = 0
    decode_steps: int = 0
    refills: int = 0
    prefills: int = 0
    compactions: int = 0
    preemptions: int = 0  # samples sent back to the queue for want of pages (paged cache)
    slots: int = 0
    slot_steps: int = 0  # decode steps x the decode batch's rows they ran with (busy or idle)
    decoded: int = 0  # tokens produced by decode steps (each sample's first token comes from its start step)

    @property
    def busy_fraction(self) -> float:
        """Share of decode-slot steps that produced a token."""
        return self.decoded / self.slot_steps if self.slot_steps else 0.0


class EngineShapes(NamedTuple):
    """The static shapes of one continuous run: slots (decode rows B), capacity (cache entries per slot, C),
    pool_size / pool_len (prompt pool entries Q and their padded length Lp), rows_out (output rows R, padded)."""

    slots: int
    capacity: int
    pool_size: int
    pool_len: int
    rows_out: int


PREFILL_TOKENS = 1 << 15  # padded prompt tokens per prompt-pool prefill call (bounds its activations)


def prefill_prompts(pool_len: int) -> int:
    """Prompts per prompt-pool prefill call at a padded prompt length `pool_len` (a power of two): a refill that
    needs more prefills them in several calls. At 2048 tokens that is 16 prompts, whose forward pass needs about
    a quarter of what all 65 prompts of a 512-slot refill at once took (8.9 GiB of temporaries for
    Qwen2.5-Math-1.5B on one H100), and still 32k tokens per call to keep an accelerator busy."""
    return max(1, PREFILL_TOKENS // pool_len)


def engine_shapes(sampler, longest_prompt: int, longest_row: int, num: int, n: int) -> EngineShapes:
    """The shapes `run_continuous` uses for `num` samples (n per prompt), prompts up to `longest_prompt` tokens and
    rows (prompt + new tokens) up to `longest_row`; `scripts/fit.py` compiles the engine at the same ones."""
    b = sampler.row_bucket(min(num, sampler.max_rows))
    pool_len = max(sampler.min_prompt_bucket, next_pow2(longest_prompt))
    step = sampler.page_size if sampler.kv_pages else 8
    capacity = -(-max(pool_len, longest_row) // step) * step
    # at most one prompt partly started plus ceil(b / n) waiting; a multiple of the batch devices (pool sharded)
    pool_size = -(-(1 + -(-b // n)) // sampler.batch_devices) * sampler.batch_devices
    return EngineShapes(b, capacity, pool_size, pool_len, next_pow2(num))


@jax.jit
def _stop_slots(st: SlotState, stop, pad_id) -> SlotState:
    """Slots `stop` [B] bool made free and their samples' output rows cleared (preempted: they restart)."""
    r_out = st.out_tokens.shape[0]
    rows = jnp.where(stop, st.row, r_out)  # out of range: dropped
    st = dataclasses.replace(
        st, live=st.live & ~stop,
        out_tokens=st.out_tokens.at[rows].set(pad_id, mode="drop"),
        out_logprobs=st.out_logprobs.at[rows].set(0.0, mode="drop"),
        out_entropy=st.out_entropy.at[rows].set(0.0, mode="drop"),
        out_len=st.out_len.at[rows].set(0, mode="drop"), out_stop=st.out_stop.at[rows].set(False, mode="drop"))
    return _constrain(st)


def run_continuous(sampler, prompts: Sequence[np.ndarray], limits: np.ndarray, n: int, config: SamplingConfig,
                   stop_arr: jax.Array, key: jax.Array, progress: Callable[[int], None] | None = None):
    """Decodes every (prompt, sample) of `prompts` x n with per-row limits `limits` [P * n] (rows prompt-major).

    `sampler` is the `Sampler` (its graphdef, params, mesh, rules, cache dtype, buckets, max_rows,
    decode_chunk, refill_min, kv_pages, page_size). Returns numpy (tokens, logprobs, entropy, lengths, stopped)
    for the R rows.

    With a paged cache (`sampler.kv_pages`, pages per batch device), before every chunk each live slot is grown
    to its length + chunk (capped at its row's end), and when a device's pool runs short its newest slots are
    preempted: their pages return to the pool, their output rows are cleared and their samples go back to the
    head of the queue (restarted, they draw the same tokens: a sample's keys depend only on its row and column).
    A sample then starts only on a device with a free slot and pages for its prompt and first chunk.
    """
    mcfg = nnx.merge(sampler.graphdef, sampler.params).config
    num = len(prompts) * n
    lens = np.asarray([len(p) for p in prompts], np.int64)
    max_new = int(limits.max())
    row_lens = np.repeat(lens, n)
    row_end = row_lens + limits  # cache entries a row holds at most
    b, capacity, pool_size, pool_len, rows_out = engine_shapes(sampler, int(lens.max()), int(row_end.max()), num, n)
    min_b = sampler.row_bucket(1)
    chunk = int(sampler.decode_chunk)
    stats = ContinuousStats(slots=b)
    rep = shd.replicated(sampler.mesh)
    put = lambda a: jax.device_put(np.asarray(a), rep)  # noqa: E731
    gd, params, weights = sampler.graphdef, sampler.params, sampler.decode_weights
    paged = sampler.kv_pages is not None
    groups = sampler.batch_devices if paged else 1  # a page pool per batch device; its slots keep to it
    alloc = (PageAllocator(sampler.kv_pages, sampler.page_size, b, capacity // sampler.page_size, groups) if paged
             else None)
    if paged:
        require_row_fits(sampler.kv_pages, sampler.page_size, int(row_end.max()))

    with shd.use_rules(sampler.mesh, sampler.rules):
        st, pool = _init_fn(sampler.mesh, sampler.rules, mcfg, b, capacity, rows_out, max_new, sampler.cache_dtype,
                            sampler.pad_id, pool_size, pool_len, sampler.kv_pages if paged else 0,
                            sampler.page_size if paged else 0)()

        def with_table(st):
            return dataclasses.replace(st, table=put(alloc.table())) if paged else st

        live = np.zeros(b, bool)  # host view of the slots (refreshed after every chunk)
        stuck = False  # half the slots are free, but one device holds too many live rows to compact (pages stay put)
        length = np.zeros(b, np.int64)
        row_of = np.zeros(b, np.int64)  # the output row of each slot's sample
        started = np.zeros(b, np.int64)  # when each slot's sample started (preemption takes the newest)
        clock = 0
        queue = collections.deque(range(num))  # rows not started (preempted ones back at the head)
        queued = np.bincount(np.arange(num) // n, minlength=len(prompts))  # queued rows per prompt
        entry_of: dict[int, int] = {}  # prompt -> pool entry, while it has queued rows
        free_entries = list(range(pool_size))
        while True:
            # paged: first every running slot is grown to hold its next chunk's entries (the newest give theirs back
            # when a device's pool runs short); samples start only on the pages left after that
            if paged and live.any():
                order = sorted(np.flatnonzero(live), key=lambda s_: started[s_])
                grow = {int(s_): int(min(length[s_] + chunk, row_end[row_of[s_]])) for s_ in order}
                out = alloc.grow(grow, [int(s_) for s_ in order])
                if out:
                    stop = np.zeros(b, bool)
                    stop[out] = True
                    st = _stop_slots(st, put(stop), sampler.pad_id)
                    for s_ in sorted(out, key=lambda s_: -started[s_]):  # the newest ends up last in line
                        queue.appendleft(int(row_of[s_]))
                        queued[int(row_of[s_]) // n] += 1
                    live[out] = False
                    stats.preemptions += len(out)
                st = with_table(st)
            open_slots = [int(s_) for s_ in np.flatnonzero(~live)]  # free slots not yet given a sample
            picked, slots_used, need = [], [], []
            claimed = 0
            scan = 0
            while queue and open_slots and scan < len(queue) and scan < 4 * b:
                r = queue[scan]
                i = int(r) // n
                if i not in entry_of and i not in need and claimed >= len(free_entries):
                    scan += 1  # its prompt has no pool entry free yet: later rows may start first
                    continue
                # a new sample's pages cover its prompt and its first chunk (grown like the others after that)
                slot = (alloc.place(open_slots, int(min(row_lens[r] + chunk, row_end[r]))) if paged
                        else open_slots[0])
                if slot is None:
                    break  # no pages: wait for running samples to end
                del queue[scan]
                picked.append(int(r))
                slots_used.append(slot)
                open_slots.remove(slot)
                if i not in entry_of and i not in need:
                    need.append(i)
                    claimed += 1
            if picked:
                k = len(picked)
                rows = np.asarray(picked, np.int64)
                stats.refills += 1
                lp = max(sampler.min_prompt_bucket, next_pow2(int(lens[need].max()) if need else 1))
                per = prefill_prompts(lp)
                for j0 in range(0, len(need), per):
                    part = need[j0:j0 + per]
                    pb = next_pow2(len(part))
                    toks = np.full((pb, lp), sampler.pad_id, np.int32)
                    plen = np.ones(pb, np.int32)
                    dst = np.full(pb, pool_size, np.int32)
                    for j, i in enumerate(part):
                        toks[j, :lens[i]] = prompts[i]
                        plen[j] = lens[i]
                        dst[j] = entry_of[i] = free_entries.pop(0)
                    pool = _prefill_pool(gd, params, pool, put(toks), put(plen), put(dst), weights)
                    stats.prefills += 1
                kb = min(next_pow2(k), next_pow2(b))
                slots = np.full(kb, b, np.int32)
                slots[:k] = slots_used
                entries = np.zeros(kb, np.int32)
                entries[:k] = [entry_of[int(r) // n] for r in rows]
                out_rows = np.full(kb, rows_out, np.int32)
                out_rows[:k] = rows
                lim = np.ones(kb, np.int32)
                lim[:k] = limits[rows]
                st = _insert(gd, params, with_table(st), pool, put(slots), put(entries), put(out_rows), put(lim), key,
                             stop_arr, weights, cfg=config)
                for r in rows:
                    i = int(r) // n
                    queued[i] -= 1
                    if queued[i] == 0:
                        free_entries.append(entry_of.pop(i))
                live[slots_used] = True
                length[slots_used] = row_lens[rows]
                row_of[slots_used] = rows
                started[slots_used] = np.arange(clock, clock + k)
                clock += k
            if not live.any():
                if not queue:
                    break
                if not picked:
                    raise RuntimeError(f"no sample can start: {len(queue)} queued, {alloc.free_pages if paged else 0} "
                                       f"free pages, {len(free_entries)} free prompt entries")
                continue
            if queue:
                exit_free = max(1, min(int(sampler.refill_min), len(queue), b))
            elif b // 2 >= min_b and not stuck:
                exit_free = b - b // 2  # at most half live: compact
            else:
                exit_free = b + 1
            window = min(capacity, max(MIN_WINDOW, next_pow2(int(length[live].max()) + chunk)))
            ran, st = _decode_chunk(gd, params, st, key, stop_arr, put(np.int32(exit_free)), weights, cfg=config,
                                    steps=chunk, window=window)
            stats.chunks += 1
            old_length = length
            ran, new_live, length = jax.device_get((ran, st.live, st.length))
            length = np.array(length, np.int64)
            ended = live & ~np.asarray(new_live, bool)
            done = int(ended.sum())
            stats.decode_steps += int(ran)
            stats.slot_steps += int(ran) * b
            stats.decoded += int(np.sum(length[live] - old_length[live]))
            live = np.array(new_live, bool)
            if paged:
                for s_ in np.flatnonzero(ended):
                    alloc.release(int(s_))
            if progress is not None and done:
                progress(done)
            n_live = int(live.sum())
            stuck = False
            if not queue and 0 < n_live <= b // 2 and b // 2 >= min_b:
                # with page pools a slot stays on its device: the batch shrinks to what the busiest one needs
                nb = sampler.row_bucket(max(n_live, groups * int(live.reshape(groups, -1).sum(1).max())))
                stuck = nb > b // 2  # cannot halve yet: decode whole chunks until it can
                if not stuck:
                    keep = keep_for_compaction(live, nb, groups)
                    if paged:
                        alloc.keep_slots(keep)
                    st = _compact(st, put(keep))
                    live, length, b = live[keep], length[keep], nb
                    row_of, started = row_of[keep], started[keep]
                    stats.compactions += 1
        out = jax.device_get((st.out_tokens, st.out_logprobs, st.out_entropy, st.out_len, st.out_stop))
    return tuple(np.asarray(a)[:num] for a in out), stats
