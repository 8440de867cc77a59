"""Qwen2 model: logits parity with transformers (float32), HF import/export, sharding invariance, KV cache."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exploresft_jax import sharding as shd
from exploresft_jax.models import hf
from exploresft_jax.models.qwen2 import KVCache, Qwen2Config, init_model, qwen2p5_math_1p5b, qwen2p5_math_7b

from .hf_fixtures import hf_logits, make_hf_qwen2

TOL = 1e-4
VARIANTS = {  # tied/untied, GQA ratio 1/2/4, RoPE theta other than 10000
    "tied_gqa1": dict(tie=True, heads=4, kv_heads=4, theta=10000.0),
    "untied_gqa2": dict(tie=False, heads=4, kv_heads=2, theta=1e6),
    "tied_gqa4": dict(tie=True, heads=4, kv_heads=1, theta=5e5),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    torch_model = make_hf_qwen2(folder, seed=len(request.param), **VARIANTS[request.param])
    model = hf.load_hf_model(folder, dtype="float32")
    return folder, torch_model, model


def _left_padded_batch(rng, vocab=96):
    lengths = [11, 7, 3]
    t = max(lengths)
    tokens = np.zeros((len(lengths), t), np.int64)
    mask = np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        tokens[i, t - n:] = rng.integers(3, vocab, n)
        mask[i, t - n:] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return tokens, mask, positions


def test_logits_parity_left_padded(pair):
    _, torch_model, model = pair
    tokens, mask, positions = _left_padded_batch(np.random.default_rng(0))
    ref = hf_logits(torch_model, tokens, mask, positions)
    hidden = model(jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32), attn_mask=jnp.asarray(mask, bool))
    ours = np.asarray(model.logits(hidden))
    valid = mask.astype(bool)
    assert np.abs(ref).max() > 0.5  # not trivially small
    np.testing.assert_array_less(np.abs(ours - ref)[valid].max(), TOL)


def test_packed_segments_match_separate_sequences(pair):
    _, torch_model, model = pair
    rng = np.random.default_rng(1)
    seg_lengths = [4, 6, 3]
    tokens = rng.integers(3, 96, sum(seg_lengths))[None]
    segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(seg_lengths)])[None]
    positions = np.concatenate([np.arange(n) for n in seg_lengths])[None]
    hidden = model(jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32),
                   segment_ids=jnp.asarray(segment_ids, jnp.int32))
    ours = np.asarray(model.logits(hidden))[0]
    start = 0
    for n in seg_lengths:
        ref = hf_logits(torch_model, tokens[:, start:start + n])[0]
        np.testing.assert_array_less(np.abs(ours[start:start + n] - ref).max(), TOL)
        start += n


def test_import_export_roundtrip_is_bit_exact_and_loads_in_transformers(pair, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    folder, torch_model, model = pair
    out = hf.export_hf(model, tmp_path / "export", dtype="float32", tokenizer_dir=folder)
    again = hf.load_hf_model(out, dtype="float32")
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = np.random.default_rng(2).integers(3, 96, (2, 9))
    np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(torch_model, tokens))
    cfg = json.loads((out / "config.json").read_text())
    assert ("lm_head.weight" in hf.SafetensorsFolder(out)) == (not cfg["tie_word_embeddings"])


def test_bf16_sharded_checkpoint_loads(tmp_path):
    """A bf16 checkpoint split over several files with an index json: values are the bf16 weights upcast."""
    import torch

    torch_model = make_hf_qwen2(tmp_path, tie=False, torch_dtype="bfloat16", max_shard_size="20KB", seed=5)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model = hf.load_hf_model(tmp_path, dtype="float32")
    assert model.config.dtype == "float32" and model.embed[...].dtype == jnp.float32
    ref = torch_model.model.layers[1].self_attn.o_proj.weight.detach().to(torch.bfloat16).float().numpy()
    ours = np.asarray(model.layers.o_kernel[...][1]).reshape(-1, 32).T
    np.testing.assert_array_equal(ours, ref)
    assert hf.load_hf_config(tmp_path)[0].dtype == "bfloat16"  # checkpoint dtype is the default compute dtype


def test_from_hf_config_accepts_v4_and_v5_forms():
    base = dict(model_type="qwen2", vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    v4 = Qwen2Config.from_hf_config({**base, "rope_theta": 1e6, "torch_dtype": "bfloat16"})
    v5 = Qwen2Config.from_hf_config({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
                                     "dtype": "bfloat16"})
    assert v4 == v5 and v4.rope_theta == 1e6 and v4.head_dim == 16 and v4.dtype == "bfloat16"
    with pytest.raises(ValueError, match="rope_type"):
        Qwen2Config.from_hf_config({**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}})
    with pytest.raises(ValueError, match="missing"):
        Qwen2Config.from_hf_config({"model_type": "qwen2"})


def test_presets_match_published_sizes():
    assert abs(qwen2p5_math_1p5b().num_params / 1e9 - 1.54) < 0.01
    assert abs(qwen2p5_math_7b().num_params / 1e9 - 7.62) < 0.01


# --- sharding invariance -----------------------------------------------------------------------------------------
SHARD_CFG = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, dtype="float32", remat_policy="full")


def _loss_and_grads(model, tokens, positions, weights, mesh=None, rules=None):
    graphdef, state = nnx.split(model)

    def loss_fn(state):
        m = nnx.merge(graphdef, state)
        return jnp.sum(m.logits(m(tokens, positions)) * weights)

    if mesh is None:
        return jax.jit(jax.value_and_grad(loss_fn))(state)
    with shd.use_rules(mesh, rules):
        data = shd.batch_sharding(mesh, rules, 2)
        f = jax.jit(jax.value_and_grad(loss_fn), in_shardings=(shd.state_shardings(state, mesh, rules),))
        return f(state), data


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2)])
def test_same_logits_and_grads_on_meshes(mesh_shape):
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(0, 64, (8, 6)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (8, 6))
    weights = jnp.asarray(rng.normal(size=(8, 6, 64)), jnp.float32)
    ref_loss, ref_grads = _loss_and_grads(init_model(SHARD_CFG, seed=7), tokens, positions, weights)
    mesh = shd.make_mesh(mesh_shape)
    model = init_model(SHARD_CFG, seed=7, mesh=mesh, rules=shd.TRAIN_RULES)
    assert not model.layers.q_kernel[...].sharding.is_fully_replicated
    data = shd.batch_sharding(mesh, shd.TRAIN_RULES, 2)
    (loss, grads), _ = _loss_and_grads(model, jax.device_put(tokens, data), jax.device_put(positions, data),
                                       weights, mesh, shd.TRAIN_RULES)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("unroll,remat", [(2, "none"), (8, "full")])
def test_unrolled_layer_scan_gives_the_same_logits_and_grads(unroll, remat):
    # scan_unroll only changes how the layer loop is compiled: the function and its gradient stay the same
    rng = np.random.default_rng(4)
    tokens = jnp.asarray(rng.integers(0, 64, (4, 6)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (4, 6))
    weights = jnp.asarray(rng.normal(size=(4, 6, 64)), jnp.float32)
    cfg = SHARD_CFG.replace(remat_policy=remat, num_layers=3)
    ref_loss, ref_grads = _loss_and_grads(init_model(cfg, seed=5), tokens, positions, weights)
    loss, grads = _loss_and_grads(init_model(cfg.replace(scan_unroll=unroll), seed=5), tokens, positions, weights)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="scan_unroll=0"):
        cfg.replace(scan_unroll=0)


# --- KV cache -----------------------------------------------------------------------------------------------------
def test_cached_decode_equals_full_forward():
    model = init_model(SHARD_CFG.replace(remat_policy="none"), seed=11)
    tokens, mask, positions = _left_padded_batch(np.random.default_rng(4), vocab=64)
    new_tokens = np.random.default_rng(5).integers(0, 64, (3, 2))
    b, t = tokens.shape
    cache = KVCache.zeros(model.config, b, t + 4, dtype=jnp.float32)
    _, cache = model.decode(jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32), cache,
                            attn_mask=jnp.asarray(mask, bool))
    step_hidden = []
    pos = positions[:, -1] + 1
    for i in range(2):
        h, cache = model.decode(jnp.asarray(new_tokens[:, i:i + 1], jnp.int32),
                                jnp.asarray(pos[:, None] + i, jnp.int32), cache, attn_mask=jnp.ones((b, 1), bool))
        step_hidden.append(np.asarray(h[:, 0]))
    full_tokens = np.concatenate([tokens, new_tokens], 1)
    full_mask = np.concatenate([mask, np.ones((b, 2), np.int64)], 1)
    full_pos = np.clip(np.cumsum(full_mask, 1) - 1, 0, None)
    full = np.asarray(model(jnp.asarray(full_tokens, jnp.int32), jnp.asarray(full_pos, jnp.int32),
                            attn_mask=jnp.asarray(full_mask, bool)))
    np.testing.assert_allclose(np.stack(step_hidden, 1), full[:, t:], atol=1e-5)
    assert int(cache.index) == t + 2


# --- initialisation -------------------------------------------------------------------------------------------------
def test_unknown_init_name_raises():
    from exploresft_jax.models.qwen2 import _param

    with pytest.raises(ValueError, match=r"'uniform'.*\['normal', 'ones', 'zeros'\]"):
        _param(nnx.Rngs(0), (2, 3), ("embed", "mlp"), SHARD_CFG, "uniform")
    assert float(jnp.sum(_param(None, (2, 3), ("embed", "mlp"), SHARD_CFG, "ones")[...])) == 6.0
    assert float(jnp.sum(jnp.abs(_param(None, (2, 3), ("embed", "mlp"), SHARD_CFG, "zeros")[...]))) == 0.0


def test_forward_has_profile_scopes_and_call_is_forward():
    """forward() and model() agree; the lowered program carries the embed / attention / mlp / final_norm
    scopes that profiles show."""
    model = init_model(SHARD_CFG.replace(remat_policy="none"), seed=2)
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 64, (2, 5)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (2, 5))
    np.testing.assert_array_equal(np.asarray(model.forward(tokens, positions)), np.asarray(model(tokens, positions)))
    graphdef, state = nnx.split(model)
    text = jax.jit(lambda st, x, p: nnx.merge(graphdef, st).forward(x, p)).lower(state, tokens, positions).as_text(
        debug_info=True)
    for scope in ("embed", "attention", "mlp", "final_norm"):
        assert re.search(rf'["/]{scope}/', text), scope  # loc("attention/...") or loc("jit(...)/embed/...")
