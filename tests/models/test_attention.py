"""Attention backends: every backend equals the dense reference in values and gradients (GQA 1/2/4, left
padding, packed segments), the model keeps transformers parity with the blockwise backend, and blockwise
attention's compiled memory does not grow with T x S."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exploresft_jax.models import attention as A
from exploresft_jax.models import hf
from exploresft_jax.models.qwen2 import KVCache

from .hf_fixtures import hf_logits, make_hf_qwen2

T, N, H = 256, 4, 8


def _segments() -> np.ndarray:
    """Three rows: left padding (37 tokens), three packed examples + right padding, one full row."""
    seg = np.ones((3, T), np.int32)
    seg[0, :37] = 0
    seg[1, 60:150] = 2
    seg[1, 150:230] = 3
    seg[1, 230:] = 0
    return seg


def _inputs(kv_heads: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(3, T, N, H)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, T, kv_heads, H)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(3, T, kv_heads, H)), jnp.float32)
    return q, k, v


def _value_and_grads(backend: str, q, k, v, seg, *, packed: bool = True):
    seg = jnp.asarray(seg)
    valid = (seg > 0)[:, :, None, None]
    w = jnp.cos(jnp.arange(q.size, dtype=jnp.float32).reshape(q.shape))  # a loss that weighs every output

    @jax.jit
    def run(q, k, v):
        def loss(q, k, v):
            out = A.attend(q, k, v, seg, seg, backend=backend, packed=packed)
            return jnp.sum(jnp.where(valid, out * w, 0.0)), out
        (_, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    out, grads = run(q, k, v)
    return np.where(np.asarray(valid), np.asarray(out), 0.0), [np.asarray(g) for g in grads]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Several blocks per row even at T=256 (128 is the smallest splash block)."""
    monkeypatch.setattr(A, "DEFAULT_BLOCK", 128)


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["gqa1", "gqa2", "gqa4"])
@pytest.mark.parametrize("backend", ["blockwise", "splash", "cudnn"])
def test_backend_equals_dense(backend, kv_heads):
    q, k, v = _inputs(kv_heads, seed=kv_heads)
    seg = _segments()
    ref_out, ref_grads = _value_and_grads("dense", q, k, v, seg)
    out, grads = _value_and_grads(backend, q, k, v, seg)
    assert np.abs(ref_out).max() > 0.1
    np.testing.assert_allclose(out, ref_out, atol=2e-5)
    for g, r in zip(grads, ref_grads):
        assert np.abs(r).max() > 0.1
        np.testing.assert_allclose(g, r, atol=5e-5)


@pytest.mark.parametrize("backend", ["splash", "blockwise"])
def test_sharded_over_a_mesh_equals_dense(backend):
    """Under a (2, 2, 2) mesh with the training rules: batch over data x fsdp, heads over tensor. Splash runs
    inside shard_map (a Mosaic kernel is not auto-partitioned); blockwise is partitioned by XLA."""
    from exploresft_jax import sharding as shd

    q, k, v = _inputs(2, seed=5)
    q, k, v = (jnp.concatenate([x, x[:1]], 0) for x in (q, k, v))  # 4 rows: divisible by data x fsdp
    seg = np.concatenate([_segments(), _segments()[1:2]], 0)
    ref_out, ref_grads = _value_and_grads("dense", q, k, v, seg)
    with shd.use_rules(shd.make_mesh((2, 2, 2)), shd.TRAIN_RULES):
        out, grads = _value_and_grads(backend, q, k, v, seg)
    np.testing.assert_allclose(out, ref_out, atol=2e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=5e-5)


def test_blockwise_small_tiles_and_ragged_lengths():
    """Tiles that do not divide T (padded internally), and a query block seeing no key at all."""
    q, k, v = _inputs(2)
    q, k, v = q[:, :200], k[:, :200], v[:, :200]
    seg = _segments()[:, :200]
    ref_out, ref_grads = _value_and_grads("dense", q, k, v, seg)
    rng_seg = jnp.asarray(seg)

    def loss(q, k, v):
        out = A.attend(q, k, v, rng_seg, rng_seg, backend="blockwise", block_q=48, block_k=32)
        return jnp.sum(jnp.where((rng_seg > 0)[:, :, None, None], out * jnp.cos(jnp.arange(H)), 0.0)), out

    def loss_ref(q, k, v):
        out = A.attend(q, k, v, rng_seg, rng_seg, backend="dense")
        return jnp.sum(jnp.where((rng_seg > 0)[:, :, None, None], out * jnp.cos(jnp.arange(H)), 0.0)), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
    (_, ref), ref_g = jax.jit(jax.value_and_grad(loss_ref, (0, 1, 2), has_aux=True))(q, k, v)
    valid = np.asarray(seg > 0)[:, :, None, None]
    np.testing.assert_allclose(np.where(valid, out, 0), np.where(valid, ref, 0), atol=2e-5)
    assert np.all(np.asarray(out)[0, :37] == 0)  # padding queries see nothing: exactly 0
    for g, r in zip(grads, ref_g):
        np.testing.assert_allclose(g, r, atol=5e-5)


def test_blockwise_with_explicit_positions_over_a_cache():
    """Queries at slots 40..55 over a 96-slot cache with invalid slots: the cache-style visibility rule."""
    rng = np.random.default_rng(3)
    b, t, s, kh = 2, 16, 96, 2
    q = jnp.asarray(rng.normal(size=(b, t, N, H)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, kh, s, H)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, kh, s, H)), jnp.float32)
    kv_valid = np.ones((b, s), np.int32)
    kv_valid[0, :9] = 0
    kv_valid[:, 56:] = 0
    args = (jnp.ones((b, t), jnp.int32), jnp.asarray(kv_valid))
    pos = dict(q_pos=jnp.broadcast_to(40 + jnp.arange(t), (b, t)), kv_pos=jnp.broadcast_to(jnp.arange(s), (b, s)))
    ref = A.attend(q, k, v, *args, backend="dense", kv_layout="BKSH", **pos)
    out = A.attend(q, k, v, *args, backend="blockwise", kv_layout="BKSH", block_q=8, block_k=16, **pos)
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_cudnn_unpacked_path_needs_right_padding():
    """Rows without segment ids go to cuDNN with key lengths: exact on right-padded rows, NaN (never a silently
    wrong value) on a left-padded one."""
    q, k, v = _inputs(2)
    seg = np.ones((3, T), np.int32)
    seg[0, 200:] = 0
    seg[1, 17:] = 0
    ref, ref_g = _value_and_grads("dense", q, k, v, seg)
    out, grads = _value_and_grads("cudnn", q, k, v, seg, packed=False)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    for g, r in zip(grads, ref_g):
        np.testing.assert_allclose(g, r, atol=5e-5)
    left = seg.copy()
    left[2, :5] = 0
    bad = A.attend(q, k, v, jnp.asarray(left), jnp.asarray(left), backend="cudnn", packed=False)
    assert np.all(np.isnan(np.asarray(bad)[2])) and not np.any(np.isnan(np.asarray(bad)[:2]))


def test_auto_resolution_per_platform():
    r = A.resolve_backend
    assert r("auto", t=4096, s=4096, index_positions=True, platform="tpu") == "splash"
    assert r("auto", t=100, s=100, index_positions=True, platform="tpu") == "blockwise"  # not a multiple of 128
    assert r("auto", t=4096, s=4096, index_positions=True, platform="gpu") == "cudnn"
    assert r("auto", t=4096, s=4096, index_positions=True, platform="cpu") == "blockwise"
    assert r("auto", t=64, s=64, index_positions=True, platform="cpu") == "dense"
    assert r("splash", t=512, s=2048, index_positions=False, platform="tpu") == "blockwise"
    assert r("auto", t=1, s=8192, index_positions=False, platform="tpu") == "dense"  # a decode step
    with pytest.raises(ValueError, match="attention='flash'"):
        r("flash", t=8, s=8, index_positions=True)


def test_blockwise_memory_does_not_grow_with_scores():
    """Compiled temporaries of attention forward + backward at T = 4096 (one row, 12 heads): dense keeps the
    [12, T, T] float32 scores (0.8 GB); blockwise keeps O(T x block)."""
    t, n, kh, h = 4096, 12, 2, 128
    q = jax.ShapeDtypeStruct((1, t, n, h), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, t, kh, h), jnp.float32)
    seg = jax.ShapeDtypeStruct((1, t), jnp.int32)

    def temp(backend):
        def loss(q, k, v, seg):
            return jnp.sum(A.attend(q, k, v, seg, seg, backend=backend, block_q=512, block_k=512))
        compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, kv, kv, seg).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    dense, blockwise = temp("dense"), temp("blockwise")
    assert dense > 12 * t * t * 4  # the scores themselves
    assert blockwise < dense / 20, (blockwise, dense)


# --- in the model ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attn_model")
    torch_model = make_hf_qwen2(folder, seed=7, heads=4, kv_heads=2)
    return folder, torch_model


def test_model_blockwise_matches_transformers_and_dense_gradients(hf_pair, monkeypatch):
    monkeypatch.setattr(A, "DEFAULT_BLOCK", 8)  # several blocks per row in a 2-layer model
    folder, torch_model = hf_pair
    dense = hf.load_hf_model(folder, dtype="float32", attention="dense")
    block = hf.load_hf_model(folder, dtype="float32", attention="blockwise")
    rng = np.random.default_rng(0)
    lengths = [29, 17, 6]
    t = max(lengths)
    tokens = np.zeros((3, t), np.int64)
    mask = np.zeros((3, t), np.int64)
    for i, n in enumerate(lengths):
        tokens[i, t - n:] = rng.integers(3, 96, n)
        mask[i, t - n:] = 1
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    ref = hf_logits(torch_model, tokens, mask, positions)
    args = (jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32))
    ours = np.asarray(block.logits(block(*args, attn_mask=jnp.asarray(mask, bool))))
    np.testing.assert_array_less(np.abs(ours - ref)[mask.astype(bool)].max(), 1e-4)

    from flax import nnx

    def loss_fn(model):
        hidden = model(*args, attn_mask=jnp.asarray(mask, bool))
        return jnp.sum(jnp.where(jnp.asarray(mask, bool)[..., None], model.logits(hidden) * 0.01, 0.0))

    g_dense = jax.tree.leaves(nnx.grad(loss_fn)(dense))
    g_block = jax.tree.leaves(nnx.grad(loss_fn)(block))
    for a, b in zip(g_block, g_dense):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_prefill_over_fresh_keys_equals_prefill_over_the_cache(hf_pair, monkeypatch):
    """The sampler's prefill (cache_is_empty=True, long-context backend over the fresh keys) gives the same hidden
    states and cache as attending over all cache slots."""
    monkeypatch.setattr(A, "DEFAULT_BLOCK", 8)
    folder, _ = hf_pair
    model = hf.load_hf_model(folder, dtype="float32", attention="blockwise")
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(3, 96, (2, 20)), jnp.int32)
    mask = np.ones((2, 20), bool)
    mask[1, :7] = False
    positions = jnp.asarray(np.clip(np.cumsum(mask, 1) - 1, 0, None), jnp.int32)
    cache = KVCache.zeros(model.config, 2, 48, jnp.float32)
    h_fresh, c_fresh = model.decode(tokens, positions, cache, attn_mask=jnp.asarray(mask), cache_is_empty=True)
    h_cache, c_cache = model.decode(tokens, positions, cache, attn_mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(h_fresh)[mask], np.asarray(h_cache)[mask], atol=1e-5)
    np.testing.assert_allclose(c_fresh.k, c_cache.k, atol=1e-5)
    assert int(c_fresh.index) == int(c_cache.index) == 20
