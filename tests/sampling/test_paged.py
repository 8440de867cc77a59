"""Paged KV cache pieces: the page allocator's bookkeeping and preemption order (`sampling.paged`); token writes
and row reads through shuffled page tables against a dense per-row cache, decode attention over pages against
float64 NumPy attention, and `Qwen2.decode_ragged` over a page pool against the same steps on the dense slot
cache (`models.paged_kv`)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from exploresft_jax.models.paged_kv import attend_pages, gather_rows, write_token
from exploresft_jax.sampling.paged import PageAllocator, keep_for_compaction


def _assert_consistent(alloc: PageAllocator):
    held = [(alloc.group_of(s), p) for s in range(alloc.slots) for p in alloc.pages_of(s)]
    assert len(held) == len(set(held)), "a page held twice"
    assert all(0 <= p < alloc.num_pages for _, p in held)
    assert len(held) + alloc.free_pages == alloc.num_pages * alloc.groups


def test_reserve_grows_on_demand_and_release_returns_pages():
    alloc = PageAllocator(num_pages=6, page_size=4, slots=3, pages_per_slot=4)
    assert alloc.reserve(0, 5) and len(alloc.pages_of(0)) == 2  # 5 entries -> 2 pages of 4
    assert alloc.reserve(0, 8) and len(alloc.pages_of(0)) == 2  # still fits
    assert alloc.reserve(0, 3) and len(alloc.pages_of(0)) == 2  # never shrinks
    assert alloc.reserve(1, 13) and len(alloc.pages_of(1)) == 4
    _assert_consistent(alloc)
    assert alloc.free_pages == 0
    assert not alloc.reserve(2, 1) and alloc.pages_of(2) == ()  # nothing taken on failure
    alloc.release(1)
    assert alloc.free_pages == 4 and alloc.reserve(2, 16)
    _assert_consistent(alloc)
    table = alloc.table()
    assert table.shape == (3, 4) and table.dtype == np.int32
    np.testing.assert_array_equal(table[2], alloc.pages_of(2))
    np.testing.assert_array_equal(table[0, :2], alloc.pages_of(0))
    with pytest.raises(ValueError, match="slot 0: 17 entries need 5 pages of 4; a slot's page table has 4"):
        alloc.reserve(0, 17)


def test_grow_preempts_the_newest_slots_first():
    alloc = PageAllocator(num_pages=8, page_size=2, slots=4, pages_per_slot=8)
    order = [2, 0, 3, 1]  # oldest first
    assert alloc.grow({s: 3 for s in order}, order) == []  # 2 pages each
    _assert_consistent(alloc)
    # every slot wants 3 pages (12 > 8): the newest (1) goes, then the rest fit (9 > 8: 3 goes as well)
    assert alloc.grow({s: 6 for s in order}, order) == [1, 3]
    assert [len(alloc.pages_of(s)) for s in (2, 0, 3, 1)] == [3, 3, 0, 0]
    _assert_consistent(alloc)
    with pytest.raises(ValueError, match="slot 0: 17 entries need 9 pages; the pool has 8"):
        PageAllocator(8, 2, 1, 16).grow({0: 17}, [0])


def test_groups_keep_each_slot_on_its_own_devices_pages():
    """4 slots over 2 groups (one pool of 4 pages per device): slots 0-1 take group 0's pages, 2-3 group 1's;
    a full group refuses its slots while the other still has room; new rows go where most pages are free;
    growth preempts within a group only; a compaction may not move a slot to another group."""
    alloc = PageAllocator(num_pages=4, page_size=2, slots=4, pages_per_slot=4, groups=2)
    assert [alloc.group_of(s) for s in range(4)] == [0, 0, 1, 1]
    assert alloc.reserve(0, 6)  # 3 of group 0's 4 pages
    assert alloc.place([1, 2, 3], 2) == 2  # group 1 has 4 free, group 0 has 1
    assert alloc.place([1, 3], 3) == 3  # 2 pages: only group 1 has them (3 free there, 1 in group 0)
    assert alloc.place([1], 3) is None and alloc.pages_of(1) == ()  # group 0 has 1 page: nothing taken
    assert alloc.free_pages == 2  # one in each group
    _assert_consistent(alloc)
    assert alloc.table().max() < 4  # page ids are local to a group
    # slots 2 (older) and 3 both grow by a page in group 1 (one left there): 3 goes; group 0 untouched
    assert alloc.grow({0: 6, 2: 4, 3: 6}, [0, 2, 3]) == [3]
    assert [len(alloc.pages_of(s)) for s in range(4)] == [3, 0, 2, 0]
    _assert_consistent(alloc)
    with pytest.raises(ValueError, match=r"slots \[1\] would change group"):
        alloc.keep_slots([0, 1])  # new slot 1 would be group 1's
    alloc.keep_slots([0, 2])
    assert alloc.slots == 2 and alloc.pages_of(1) and alloc.group_of(1) == 1
    _assert_consistent(alloc)


def test_compaction_keeps_rows_in_their_group():
    live = np.array([0, 1, 0, 0, 1, 1, 0, 0], bool)  # group 0: slot 1 live; group 1: slots 4 and 5 live
    np.testing.assert_array_equal(keep_for_compaction(live, 4, groups=2), [1, 0, 4, 5])
    np.testing.assert_array_equal(keep_for_compaction(live, 4, groups=1), [1, 4, 5, 0])
    with pytest.raises(ValueError, match="group 1 has 2 live slots; 2 slots over 2 groups leave it 1"):
        keep_for_compaction(live, 2, groups=2)


def _paged_setup(seed, rows=3, kv_heads=2, head_dim=8, page=4, width=3, num_pages=12, groups=1):
    """Shuffled pools: row b's entries on random distinct pages of its group's pool, with the same values in a
    dense cache."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width * page, rows)
    alloc = PageAllocator(num_pages, page, rows, width, groups)
    # any page order: reads must follow the table, not the pool
    alloc._free = [list(rng.permutation(num_pages)) for _ in range(groups)]
    dense = np.zeros((rows, kv_heads, width * page, head_dim), np.float32)
    pages = jnp.zeros((groups, kv_heads, num_pages, page, head_dim), jnp.float32)
    for t in range(width * page):
        live = t < lengths
        for b in np.flatnonzero(live):
            assert alloc.reserve(int(b), t + 1)
        new = rng.standard_normal((rows, kv_heads, head_dim)).astype(np.float32)
        dense[live, :, t] = new[live]
        pages = write_token(pages, jnp.asarray(new), jnp.asarray(alloc.table()), jnp.full((rows,), t, jnp.int32),
                            jnp.asarray(live))
    return alloc, pages, dense, lengths


def _values_on_the_same_pages(rng, alloc, k_pages, k_dense, lengths):
    """(v_pages, v_dense): random values drawn from rng, written through alloc's table to the pages the keys of
    `_paged_setup` occupy."""
    v_dense = rng.standard_normal(k_dense.shape).astype(np.float32)
    v_pages = jnp.zeros_like(k_pages)
    table = jnp.asarray(alloc.table())
    for t in range(k_dense.shape[2]):
        v_pages = write_token(v_pages, jnp.asarray(v_dense[:, :, t]), table, jnp.full((len(lengths),), t, jnp.int32),
                              jnp.asarray(t < lengths))
    return v_pages, v_dense


def _float64_attention(q, k_dense, v_dense, lengths):
    """[B, N, H]: row b's single query q [B, N, H] over its entries [0, lengths[b]) of k_dense / v_dense
    [B, K, S, H] (GQA: query head j reads KV head j // (N / K)), softmax in float64."""
    b, kh, _, h = k_dense.shape
    n = q.shape[1]
    out = np.zeros((b, n, h))
    for r in range(b):
        for head in range(n):
            kv = head // (n // kh)
            s = k_dense[r, kv, :lengths[r]].astype(np.float64) @ q[r, head].astype(np.float64) / np.sqrt(h)
            w = np.exp(s - s.max())
            out[r, head] = (w / w.sum()) @ v_dense[r, kv, :lengths[r]].astype(np.float64)
    return out


@pytest.mark.parametrize("groups", [1, 2])
def test_written_tokens_read_back_in_row_order(groups):
    """Rows write into (and read from) their own group's pool only; with 2 groups, rows 0-2 use pool 0 and rows
    3-5 pool 1, each with page ids 0..P-1."""
    alloc, pages, dense, lengths = _paged_setup(0, rows=3 * groups, groups=groups)
    got = np.asarray(gather_rows(pages, jnp.asarray(alloc.table())))
    assert got.shape == dense.shape
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(got[b, :, :n], dense[b, :, :n])
    # rows not live wrote nothing: every page entry that no row's table covers is still zero
    used = {(alloc.group_of(b), p, o) for b, n in enumerate(lengths) for t in range(n)
            for p, o in [(alloc.pages_of(b)[t // 4], t % 4)]}
    raw = np.asarray(pages)
    for g in range(raw.shape[0]):
        for p in range(raw.shape[2]):
            for o in range(raw.shape[3]):
                assert raw[g, :, p, o].any() == ((g, p, o) in used)


@pytest.mark.parametrize("block,groups", [(None, 1), (4, 1), (8, 2)], ids=["whole", "page_blocks", "2_page_blocks"])
def test_attention_over_pages_equals_float64_reference(block, groups):
    """GQA (4 query heads on 2 KV heads): row b's token at position lengths[b] - 1 attends over its entries
    [0, lengths[b]), softmax in float64; the whole table gathered at once, or read a page (three blocks) or two
    pages (two blocks, the second half padding) at a time with the online softmax, on one or two groups."""
    alloc, k_pages, k_dense, lengths = _paged_setup(1, rows=3 * groups, groups=groups, num_pages=9)
    rng = np.random.default_rng(2)
    v_pages, v_dense = _values_on_the_same_pages(rng, alloc, k_pages, k_dense, lengths)
    b, _, _, h = k_dense.shape
    q = rng.standard_normal((b, 1, 4, h)).astype(np.float32)
    pos = jnp.asarray(lengths - 1, jnp.int32)
    got = np.asarray(attend_pages(jnp.asarray(q), k_pages, v_pages, jnp.asarray(alloc.table()), pos, block=block))
    np.testing.assert_allclose(got[:, 0], _float64_attention(q[:, 0], k_dense, v_dense, lengths), rtol=1e-5,
                               atol=1e-5)


def _kernel_contract(calls):
    """The Pallas TPU paged-attention kernel's contract written out directly (q [B, N, H] already scaled; keys of
    row b and KV head h: k_pages[h, page_indices[b]] flattened, those < lengths[b] visible), recording each
    call's arguments in `calls`: what `kernel_attend_pages` hands the kernel, checked on CPU."""
    import jax

    def kernel(q, k_pages, v_pages, lengths, page_indices, *, pages_per_compute_block):
        calls.append(dict(pages=k_pages.shape, table=page_indices.shape, block=pages_per_compute_block))
        assert page_indices.shape[1] % pages_per_compute_block == 0 and lengths.dtype == jnp.int32
        b, n, h = q.shape
        kh = k_pages.shape[0]
        k = k_pages[:, page_indices].reshape(kh, b, -1, h)  # [K, B, W x page, H]
        v = v_pages[:, page_indices].reshape(kh, b, -1, h)
        s = jnp.einsum("BKGH,KBSH->BKGS", q.reshape(b, kh, n // kh, h), k)
        s = jnp.where((jnp.arange(k.shape[2])[None] < lengths[:, None])[:, None, None], s, -jnp.inf)
        return jnp.einsum("BKGS,KBSH->BKGH", jax.nn.softmax(s, axis=-1), v).reshape(b, n, h)

    return kernel


@pytest.mark.parametrize("mesh_shape", [None, (1, 2, 2)], ids=["groups_in_turn", "shard_map_2x2"])
def test_tpu_kernel_wiring_reads_the_layers_pages(mesh_shape):
    """`kernel_attend_pages` hands the TPU kernel the stack [G, K, L, P, page, H] of each device as [K, L x P,
    page, H] with layer i's pages at table + i x P, the query scaled, lengths + 1 (the row's own token is
    visible) and a block of pages dividing the table's width; a kernel of the same contract then gives float64
    attention over the chosen layer only (the other layers hold other values). On two groups in turn without a
    mesh, and in a shard_map over 2 batch devices x 2 tensor devices (one pool and one KV head per device)."""
    import jax

    from exploresft_jax import sharding as shd
    from exploresft_jax.models.paged_kv import kernel_attend_pages

    groups, layers, layer = 2, 3, 1
    alloc, k_one, k_dense, lengths = _paged_setup(3, rows=4, groups=groups, num_pages=9)
    rng = np.random.default_rng(6)
    v_one, v_dense = _values_on_the_same_pages(rng, alloc, k_one, k_dense, lengths)
    other = lambda: jnp.asarray(rng.standard_normal(k_one.shape), jnp.float32)  # noqa: E731
    k_stack = jnp.stack([other(), k_one, other()], axis=2)  # [G, K, L, P, page, H]: the layer read is 1
    v_stack = jnp.stack([other(), v_one, other()], axis=2)
    q = rng.standard_normal((4, 1, 4, 8)).astype(np.float32)
    calls = []
    args = (jnp.asarray(q), k_stack, v_stack, jnp.asarray(alloc.table()), jnp.asarray(lengths - 1, jnp.int32))
    if mesh_shape is None:
        got = kernel_attend_pages(*args, layer=layer, kernel=_kernel_contract(calls))
    else:
        mesh = shd.make_mesh(mesh_shape, devices=jax.devices()[:4])
        rules = shd.sample_rules(tensor_parallel=True)  # rows over fsdp, KV heads over tensor
        with shd.use_rules(mesh, rules):
            got = jax.jit(lambda *a: kernel_attend_pages(*a, layer=jnp.int32(layer),
                                                         kernel=_kernel_contract(calls)))(*args)
    kh = 2 if mesh_shape is None else 1
    assert calls and all(c == dict(pages=(kh, layers * 9, 4, 8), table=(2, 3), block=3) for c in calls), calls
    np.testing.assert_allclose(np.asarray(got)[:, 0], _float64_attention(q[:, 0], k_dense, v_dense, lengths),
                               rtol=1e-5, atol=1e-5)


def test_tpu_kernel_is_refused_off_tpu_and_picked_for_tpu():
    """Asked for on CPU, the Pallas kernel is one line naming the target and the way out; `auto` takes the
    reference on CPU; the block of pages is the largest divisor of the table width within 512 entries."""
    from exploresft_jax.models.paged_kv import attend_pages, compute_block_pages, kernel_attend_pages

    alloc, k_pages, _, lengths = _paged_setup(1)
    args = (jnp.zeros((3, 1, 4, 8)), k_pages, k_pages, jnp.asarray(alloc.table()), jnp.asarray(lengths - 1))
    with pytest.raises(ValueError, match=r"^the paged-attention kernel needs a TPU compile target; this call "
                                         r"compiles for cpu .*impl='reference'\)$"):
        kernel_attend_pages(*args)
    with pytest.raises(ValueError, match="impl='kernels'; expected one of"):
        attend_pages(*args, impl="kernels")
    np.testing.assert_array_equal(attend_pages(*args), attend_pages(*args, impl="reference"))
    assert compute_block_pages(1120, 16) == 32 and compute_block_pages(1120, 64) == 8
    assert compute_block_pages(7, 16) == 7 and compute_block_pages(13, 64) == 1 and compute_block_pages(4, 16) == 4


@pytest.mark.parametrize("per_layer", [False, True], ids=["stacked", "per_layer"])
def test_decode_ragged_over_pages_equals_dense_slots(per_layer):
    """Rows advancing at their own pace (each step a random subset of rows is live): the paged decode step gives
    the dense step's hidden states on every live row, and the pages end up holding the dense cache's entries."""
    import jax

    from exploresft_jax.models.qwen2 import KVCache, Qwen2Config, init_model, unstack_layers

    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, dtype="float32", param_dtype="float32")
    model = init_model(cfg, seed=3)
    layers = jax.jit(unstack_layers, static_argnums=1)(model.layers.stacked(), cfg) if per_layer else None
    rows, page, width, steps = 3, 4, 4, 10
    cap = page * width
    rng = np.random.default_rng(5)
    alloc = PageAllocator(num_pages=rows * width + 2, page_size=page, slots=rows, pages_per_slot=width)
    alloc._free = [list(rng.permutation(alloc.num_pages))]
    dense = KVCache.zeros(cfg, rows, cap, jnp.float32)
    dk, dv = dense.k, dense.v
    pool = (1, cfg.num_kv_heads, cfg.num_layers, alloc.num_pages, page, cfg.head_dim)
    pk, pv = jnp.zeros(pool, jnp.float32), jnp.zeros(pool, jnp.float32)
    dense_step = jax.jit(lambda t, n, w, k, v: model.decode_ragged(t, n, w, k, v, cap, layers=layers))
    paged_step = jax.jit(lambda t, n, w, k, v, table: model.decode_ragged(t, n, w, k, v, cap, layers=layers,
                                                                          page_table=table))
    length = np.zeros(rows, np.int32)
    for _ in range(steps):
        live = rng.random(rows) < 0.7
        live[length >= cap] = False
        for b in np.flatnonzero(live):
            assert alloc.reserve(int(b), int(length[b]) + 1)
        tok = jnp.asarray(rng.integers(0, cfg.vocab_size, rows), jnp.int32)
        n = jnp.asarray(length)
        h_dense, dk, dv = dense_step(tok, n, jnp.asarray(np.where(live, length, cap)), dk, dv)
        h_paged, pk, pv = paged_step(tok, n, jnp.asarray(np.where(live, length, cap)), pk, pv,
                                     jnp.asarray(alloc.table()))
        np.testing.assert_allclose(np.asarray(h_paged)[live], np.asarray(h_dense)[live], rtol=1e-5, atol=1e-5)
        length += live
    assert length.min() > 0
    table = jnp.asarray(alloc.table())
    for layer in range(cfg.num_layers):
        for paged, full in ((pk, dk), (pv, dv)):
            got = np.asarray(gather_rows(paged, table, layer))
            for b in range(rows):
                np.testing.assert_array_equal(got[b, :, :length[b]], np.asarray(full[layer, b, :, :length[b]]))


ENGINE_CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, dtype="float32", param_dtype="float32")


@pytest.fixture(scope="module")
def engine_case():
    """A tiny model, 6 prompts of 5-19 tokens x 3 samples with per-row limits of 9-35 tokens (rows of up to 47
    entries), and the dense continuous engine's outputs (8 slots) for them."""
    import jax

    from exploresft_jax import sharding as shd
    from exploresft_jax.models.qwen2 import Qwen2Config, init_model
    from exploresft_jax.sampling import Sampler

    model = init_model(Qwen2Config(**ENGINE_CFG), seed=3)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, 64, int(rng.integers(3, 20)))) for _ in range(6)]
    limits = [int(x) for x in rng.integers(1, 40, 18)]

    def run(devices=1, **kw):
        from exploresft_jax.sampling import TopK

        mesh = shd.make_mesh((1, devices, 1), devices=jax.devices()[:devices])
        s = Sampler(model, mesh=mesh, cache_dtype="float32", max_rows=8, min_prompt_bucket=16, decode_chunk=4, **kw)
        out = s.generate(prompts, n=3, max_new_tokens=limits, config=TopK(8, temperature=1.0), key=1)
        return out, s.last_stats

    return run, run()[0]


@pytest.mark.parametrize("pages,devices", [(64, 1), (12, 1), (6, 4)], ids=["roomy", "tight", "tight_4_devices"])
def test_paged_engine_gives_the_dense_engines_samples(engine_case, pages, devices):
    """The continuous engine on page pools draws the dense slot caches' samples: with room for every slot; with
    a pool of 12 pages of 8 entries (8 slots of up to 47 entries would need 48), where rows wait for pages and the
    newest are preempted and restarted; and on 4 devices with a pool of 6 pages on each (room for one longest
    row per device, 2 slots each), every slot on its own device's pages."""
    run, dense = engine_case
    out, stats = run(devices, kv_pages=pages, page_size=8)
    np.testing.assert_array_equal(out.tokens, dense.tokens)
    np.testing.assert_array_equal(out.lengths, dense.lengths)
    np.testing.assert_array_equal(out.finish_reason, dense.finish_reason)
    np.testing.assert_allclose(out.logprobs, dense.logprobs, atol=1e-5)
    np.testing.assert_allclose(out.entropy, dense.entropy, atol=1e-5)
    assert stats.compactions > 0
    assert (stats.preemptions > 0) == (pages < 64)
    assert stats.slots == 8


def test_paged_engine_refuses_a_pool_smaller_than_one_row(engine_case):
    run, _ = engine_case
    with pytest.raises(ValueError, match=r"kv_pages=5: the longest row \(47 entries\) needs 6 pages of 8"):
        run(kv_pages=5, page_size=8)
    from exploresft_jax.models.qwen2 import Qwen2Config, init_model
    from exploresft_jax.sampling import Sampler

    model = init_model(Qwen2Config(**ENGINE_CFG), seed=3)
    with pytest.raises(ValueError, match="page_size=12; expected a power of two <= 64"):
        Sampler(model, kv_pages=8, page_size=12)
    with pytest.raises(ValueError, match="for the continuous engine only"):
        Sampler(model, kv_pages=8, engine="static")
    with pytest.raises(ValueError, match="kv_pages=-3: a positive page count"):
        Sampler(model, kv_pages=-3)
    assert Sampler(model, kv_pages=0).kv_pages is None  # 0, as configs write it: dense slot caches


def test_decode_on_four_devices_reads_only_its_own_pages():
    """The compiled decode chunk over per-device page pools (4 devices, 8 slots) moves no cache data between
    devices: its only collectives carry per-row values (tokens, lengths, flags), far smaller than one device's
    pool, which stays sharded by device."""
    import re

    import jax

    from exploresft_jax import sharding as shd
    from exploresft_jax.models.qwen2 import Qwen2Config, init_model
    from exploresft_jax.sampling import Sampler
    from exploresft_jax.sampling import continuous as cont
    from exploresft_jax.sampling.strategies import SamplingConfig

    cfg = Qwen2Config(**ENGINE_CFG)
    mesh = shd.make_mesh((1, 4, 1), devices=jax.devices()[:4])
    s = Sampler(init_model(cfg, seed=3), mesh=mesh, cache_dtype="float32", max_rows=8, kv_pages=40, page_size=8)
    with shd.use_rules(mesh, s.rules):
        st, _ = cont._init_fn(mesh, s.rules, cfg, 8, 128, 16, 32, jnp.float32, 0, 4, 16, 40, 8)()
        assert st.k.shape == (4, 2, 2, 40, 8, 8)  # [G, K, L, P, page, H]
        assert {sh.data.shape for sh in st.k.addressable_shards} == {(1, 2, 2, 40, 8, 8)}
        hlo = cont._decode_chunk.lower(s.graphdef, s.params, st, jax.random.key(0), jnp.zeros(4, jnp.int32),
                                       jnp.int32(1), s.decode_weights, cfg=SamplingConfig(temperature=1.0), steps=4,
                                       window=128).compile().as_text()
    sizes = [int(np.prod([int(d) for d in m.group(1).split(",") if d] or [1]))
             for m in re.finditer(r"= \w+\[([\d,]*)\]\S* (?:all-gather|all-to-all|collective-permute|all-reduce)\(",
                                  hlo)]
    assert sizes, "no collective at all: the slots are not spread over the devices"
    pool = 2 * 40 * 2 * 8 * 8  # one device's K pool, elements
    assert max(sizes) <= 64 < pool // 100, sizes


_TPU_DECODE = '''
from jax.sharding import NamedSharding
from exploresft_jax.models.paged_kv import POOL_AXES

rows, width, pages, page = 16, 64, 4096, 16
sds = lambda shape, dtype, axes: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(  # noqa: E731
    mesh, shd.logical_to_spec(axes, rules, mesh, shape)))
pool = sds((4, 2, 2, pages, page, 128), jnp.bfloat16, POOL_AXES)
row = sds((rows,), jnp.int32, ("act_batch",))


def step(params, tokens, lengths, k, v, table):
    return nnx.merge(gd, params).decode_ragged(tokens, lengths, lengths, k, v, width * page, page_table=table)


with shd.use_rules(mesh, rules):
    compiled = jax.jit(step, donate_argnums=(3, 4)).lower(params, row, row, pool, pool,
                                                          sds((rows, width), jnp.int32, ("act_batch", None))).compile()
m = compiled.memory_analysis()
print(json.dumps(dict(kernels=fit.attention_kernels(compiled), temp=m.temp_size_in_bytes, alias=m.alias_size_in_bytes,
                      calls=compiled.as_text().count('custom_call_target="tpu_custom_call"'))))
'''


def test_tpu_decode_reads_the_pools_in_place_through_the_kernel():
    """`Qwen2.decode_ragged` over page pools compiled for a v5e-8 (the TPU compiler, no TPU; rows over 4 batch
    devices, KV heads over 2 tensor devices; in its own process, as fit.py runs): decode attention is the Pallas
    paged-attention kernel (one call, inside the layer loop), the pools are updated in place (aliased), and the
    kernel reads them where they are: the program's temporaries are far below one layer's pool per chip
    (a copy of a layer's pages for the kernel would be 16 MiB)."""
    from .tpu_compile import run_on_v5e8

    res = run_on_v5e8(_TPU_DECODE)
    assert res["kernels"] == ["paged_attention"] and res["calls"] == 1, res
    layer_pool = 1 * 4096 * 16 * 128 * 2  # one layer's K pages per chip: 1 KV head, 4096 pages of 16 x 128, bf16
    assert res["alias"] >= 2 * 2 * layer_pool, res  # K and V stacks of 2 layers, donated and updated in place
    assert res["temp"] < layer_pool // 16, res
