"""Attention backends: every backend equals the dense reference in values and gradients (GQA 1/2/4, left
padding, packed segments; the kernels in their CPU reference modes under `emulate_kernels()`, also at lengths
that are not multiples of 128 and head dims that are not powers of two), kernel requests the compile target
cannot run are refused, the model keeps transformers parity with the blockwise backend, and blockwise
attention's compiled memory does not grow with T x S."""

from __future__ import annotations

import functools

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

    with A.emulate_kernels():  # splash / cudnn in their CPU reference modes
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
    with A.emulate_kernels():
        bad = A.attend(q, k, v, jnp.asarray(left), jnp.asarray(left), backend="cudnn", packed=False)
    assert np.all(np.isnan(np.asarray(bad)[2])) and not np.any(np.isnan(np.asarray(bad)[:2]))


def _ragged_segments(t: int, *, packed: bool) -> np.ndarray:
    """Three rows of T tokens. packed: left padding, then three examples and right padding, then one full row;
    unpacked (right-padded, segment ids 0 / 1): a long row, a short one, a full one."""
    seg = np.ones((3, t), np.int32)
    if packed:
        seg[0, :t // 5] = 0
        seg[1, t // 4:t // 2] = 2
        seg[1, t // 2:t - t // 8] = 3
        seg[1, t - t // 8:] = 0
    else:
        seg[0, t - t // 6:] = 0
        seg[1, t // 7:] = 0
    return seg


def _ragged_inputs(t: int, h: int, kv_heads: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(3, t, heads, h)), jnp.float32) for heads in (N, kv_heads, kv_heads))


def _assert_equal_to_dense(backend, q, k, v, seg, *, packed=True):
    ref_out, ref_grads = _value_and_grads("dense", q, k, v, seg)
    out, grads = _value_and_grads(backend, q, k, v, seg, packed=packed)
    assert np.abs(ref_out).max() > 0.1
    np.testing.assert_allclose(out, ref_out, atol=2e-5)
    for g, r in zip(grads, ref_grads):
        assert np.abs(r).max() > 0.1
        np.testing.assert_allclose(g, r, atol=5e-5)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize("t,h", [(96, 8), (200, 8), (96, 24)], ids=["T96", "T200", "T96-H24"])
def test_cudnn_any_length_and_head_dim_equals_dense(t, h, packed, monkeypatch):
    """T not a multiple of 128 and H not a power of two: packed rows go to the Triton kernel, which receives
    T padded to a multiple of a power-of-two block and H padded to a power of two; unpacked rows to cuDNN."""
    from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

    seen = []
    mha = pallas_gpu.mha

    def recording_mha(q, k, v, segment_ids, **kw):
        seen.append((q.shape, k.shape, segment_ids.shape, kw["block_sizes"]))
        return mha(q, k, v, segment_ids, **kw)

    monkeypatch.setattr(pallas_gpu, "mha", recording_mha)
    q, k, v = _ragged_inputs(t, h, seed=t + h)
    _assert_equal_to_dense("cudnn", q, k, v, _ragged_segments(t, packed=packed), packed=packed)
    if not packed:
        assert seen == []  # cuDNN's fused attention (XLA on CPU), no Triton call
        return
    assert seen and all(x == seen[0] for x in seen)
    q_shape, k_shape, seg_shape, blocks = seen[0]
    tp, hp = q_shape[1], q_shape[3]
    assert k_shape == q_shape and seg_shape == (3, tp)
    assert _is_power_of_two(hp) and hp >= h and tp >= t
    for b in (blocks.block_q, blocks.block_k, blocks.block_q_dkv, blocks.block_kv_dkv, blocks.block_q_dq,
              blocks.block_kv_dq):
        assert _is_power_of_two(b) and tp % b == 0
    assert (tp, hp) == {(96, 8): (128, 8), (200, 8): (256, 8), (96, 24): (128, 32)}[(t, h)]


def test_triton_block_is_a_power_of_two_dividing_the_padded_length():
    for t, expected in [(1, (1, 1)), (12, (16, 16)), (96, (128, 128)), (128, (128, 128)), (200, (128, 256)),
                        (384, (128, 384)), (1000, (128, 1024))]:
        assert A.triton_block(t) == expected


def test_splash_any_length_equals_dense():
    """T = 200: padded to 256 with segment 0 inside splash_attention, blocks of 128 dividing it."""
    q, k, v = _ragged_inputs(200, H, seed=11)
    _assert_equal_to_dense("splash", q, k, v, _ragged_segments(200, packed=True))


def test_kernel_on_cpu_without_emulation_is_refused_in_one_line():
    q, k, v = _ragged_inputs(16, H)
    seg = jnp.ones((3, 16), jnp.int32)
    for backend, needs in [("cudnn", "GPU"), ("splash", "TPU")]:
        with pytest.raises(ValueError) as e:
            A.attend(q, k, v, seg, seg, backend=backend)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"attention={backend!r} needs a {needs} compile target")
        assert "compiles for cpu" in msg and "emulate_kernels()" in msg and "blockwise" in msg
        with pytest.raises(ValueError, match="emulate_kernels"):  # the functions themselves refuse too
            (A.cudnn_attention if backend == "cudnn" else A.splash_attention)(q, k, v, seg, seg)


def test_kernel_for_another_platform_is_refused():
    plan = functools.partial(A.kernel_plan, t=256, s=256, index_positions=True, packed=True, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match=r"^attention='cudnn' needs a GPU compile target; this call compiles for "
                                         r"tpu \(as given\)$"):
        plan("cudnn", platform="tpu")
    with pytest.raises(ValueError, match="attention='splash' needs a TPU compile target; this call compiles for gpu"):
        A.resolve_backend("splash", t=256, s=256, index_positions=True, platform="gpu")
    with A.emulate_kernels(), pytest.raises(ValueError, match="needs a GPU"):  # emulation is for CPU only
        plan("cudnn", platform="tpu")
    with pytest.raises(ValueError, match="needs a TPU"):  # refused for every call, a decode step's too
        A.resolve_backend("splash", t=1, s=64, index_positions=False, platform="cuda")


def test_kernel_plan_per_platform():
    def plan(backend, platform, *, t=200, s=None, index_positions=True, packed=True, dtype=jnp.bfloat16):
        return A.kernel_plan(backend, t=t, s=t if s is None else s, index_positions=index_positions, packed=packed,
                             dtype=dtype, platform=platform)

    for backend in ("auto", "cudnn"):
        assert plan(backend, "gpu", packed=False) == "cudnn"
        assert plan(backend, "gpu", packed=False, dtype=jnp.float16) == "cudnn"
        assert plan(backend, "gpu", packed=True) == "triton"
        assert plan(backend, "gpu", packed=False, dtype=jnp.float32) == "triton"  # cuDNN takes 16 bits only
        assert plan(backend, "gpu", t=1, s=4096, index_positions=False) == "dense"  # a decode step
        assert plan(backend, "gpu", t=16, s=4096, index_positions=False) == "blockwise"  # a cache read
        assert plan(backend, "gpu", t=64, s=64, index_positions=False) == "blockwise"  # explicit positions
    for backend in ("auto", "splash"):
        for t in (200, 256, 4096, 100):
            assert plan(backend, "tpu", t=t) == "splash"
        assert plan(backend, "tpu", t=1, s=8192, index_positions=False) == "dense"
        assert plan(backend, "tpu", t=512, s=2048, index_positions=False) == "blockwise"
    assert plan("auto", "cpu", t=4096) == "blockwise"
    assert plan("auto", "cpu", t=64) == "dense"
    assert plan("blockwise", "tpu") == "blockwise" and plan("dense", "gpu") == "dense"
    assert plan("dense", "tpu", t=16, s=64, index_positions=False) == "dense"  # a non-kernel choice is kept
    with A.emulate_kernels():  # CPU reference modes: the same plan, float32 included
        assert plan("cudnn", "cpu", packed=False, dtype=jnp.float32) == "cudnn"
        assert plan("cudnn", "cpu", packed=True) == "triton"
        assert plan("splash", "cpu") == "splash"
        assert plan("auto", "cpu", t=64) == "dense"  # auto on CPU never picks an emulated kernel


def test_auto_resolution_per_platform():
    r = A.resolve_backend
    assert r("auto", t=4096, s=4096, index_positions=True, platform="tpu") == "splash"
    assert r("auto", t=100, s=100, index_positions=True, platform="tpu") == "splash"  # padded to 128 inside
    assert r("auto", t=4096, s=4096, index_positions=True, platform="gpu") == "cudnn"
    assert r("auto", t=4096, s=4096, index_positions=True, platform="cpu") == "blockwise"
    assert r("auto", t=64, s=64, index_positions=True, platform="cpu") == "dense"
    assert r("splash", t=512, s=2048, index_positions=False, platform="tpu") == "blockwise"  # a cache read
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


def _left_padded_prompts(seed: int):
    """Two 20-token prompts, the second left-padded by 7: (tokens, mask [2, 20] bool, positions)."""
    tokens = jnp.asarray(np.random.default_rng(seed).integers(3, 96, (2, 20)), jnp.int32)
    mask = np.ones((2, 20), bool)
    mask[1, :7] = False
    return tokens, mask, jnp.asarray(np.clip(np.cumsum(mask, 1) - 1, 0, None), jnp.int32)


def test_prefill_over_fresh_keys_equals_prefill_over_the_cache(hf_pair, monkeypatch):
    """The sampler's prefill (cache_is_empty=True, long-context backend over the fresh keys) gives the same hidden
    states and cache as attending over all cache slots."""
    monkeypatch.setattr(A, "DEFAULT_BLOCK", 8)
    folder, _ = hf_pair
    model = hf.load_hf_model(folder, dtype="float32", attention="blockwise")
    tokens, mask, positions = _left_padded_prompts(seed=1)
    cache = KVCache.zeros(model.config, 2, 48, jnp.float32)
    h_fresh, c_fresh = model.decode(tokens, positions, cache, attn_mask=jnp.asarray(mask), cache_is_empty=True)
    h_cache, c_cache = model.decode(tokens, positions, cache, attn_mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(h_fresh)[mask], np.asarray(h_cache)[mask], atol=1e-5)
    np.testing.assert_allclose(c_fresh.k, c_cache.k, atol=1e-5)
    assert int(c_fresh.index) == int(c_cache.index) == 20


def test_prefill_of_left_padded_prompts_with_cudnn_equals_dense(hf_pair):
    """The static sampler's prompts are left-padded, which cuDNN's key lengths cannot express: the prefill over
    the fresh keys goes to the Triton kernel (segment ids 0 / 1), finite and equal to dense."""
    folder, _ = hf_pair
    dense = hf.load_hf_model(folder, dtype="float32", attention="dense")
    cudnn = hf.load_hf_model(folder, dtype="float32", attention="cudnn")
    tokens, mask, positions = _left_padded_prompts(seed=2)
    cache = KVCache.zeros(dense.config, 2, 24, jnp.float32)
    ref, _ = dense.decode(tokens, positions, cache, attn_mask=jnp.asarray(mask), cache_is_empty=True)
    with A.emulate_kernels():
        out, _ = cudnn.decode(tokens, positions, cache, attn_mask=jnp.asarray(mask), cache_is_empty=True)
    np.testing.assert_allclose(np.asarray(out)[mask], np.asarray(ref)[mask], atol=1e-5)
