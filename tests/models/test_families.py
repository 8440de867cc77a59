"""Qwen3 and Llama 3 through the same decoder: float32 logits and gradients against transformers + PyTorch, left
padding, packed segments, KV-cache decode, greedy generate, HF import -> export -> import, config mapping."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exploresft_jax.models import hf
from exploresft_jax.models.qwen2 import (
    FAMILIES,
    PRESETS,
    KVCache,
    Qwen2Config,
    RopeScaling,
    rope_frequencies,
)
from exploresft_jax.sampling import Greedy, Sampler

from .hf_fixtures import hf_logits, make_hf_model

TOL = 1e-4
VOCAB = 96
# family, tied, GQA ratio, head_dim independent of hidden / heads (qwen3), Llama 3 RoPE scaling whose bands all
# occur at head_dim 8 (wavelengths 6, 167, 4467, 1.2e5 against 64 and 256: kept, blended, scaled, scaled)
VARIANTS = {
    "qwen3_tied_gqa2_hd16": dict(family="qwen3", tie=True, heads=4, kv_heads=2, head_dim=16, theta=1e6),
    "qwen3_untied_gqa4": dict(family="qwen3", tie=False, heads=4, kv_heads=1, theta=10000.0),
    "llama_tied_gqa2_llama3": dict(family="llama", tie=True, heads=4, kv_heads=2, theta=500000.0,
                                   llama3_scaling=(8.0, 1.0, 4.0, 256)),
    "llama_untied_gqa1": dict(family="llama", tie=False, heads=4, kv_heads=4, theta=500000.0,
                              llama3_scaling=(32.0, 1.0, 4.0, 256)),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    v = dict(VARIANTS[request.param])
    torch_model = make_hf_model(folder, v.pop("family"), vocab=VOCAB, seed=len(request.param), **v)
    return request.param, folder, torch_model, hf.load_hf_model(folder, dtype="float32")


def _left_padded(rng):
    lengths = [12, 7, 3]
    t = max(lengths)
    tokens, mask = np.zeros((3, t), np.int64), np.zeros((3, t), np.int64)
    for i, n in enumerate(lengths):
        tokens[i, t - n:], mask[i, t - n:] = rng.integers(3, VOCAB, n), 1
    return tokens, mask, np.clip(np.cumsum(mask, axis=1) - 1, 0, None)


def test_config_maps_the_family(pair):
    name, folder, _, model = pair
    cfg, raw = hf.load_hf_config(folder)
    assert cfg.family == VARIANTS[name]["family"] == raw["model_type"]
    assert (cfg.rope_scaling is not None) == ("llama3_scaling" in VARIANTS[name])
    assert cfg.head_dim == (raw.get("head_dim") or 32 // 4)  # transformers' Qwen3Config defaults head_dim to 128
    layer_params = set(nnx.state(model.layers).keys() if hasattr(nnx.state(model.layers), "keys") else [])
    assert ("q_bias" in layer_params) is False and ("q_norm" in layer_params) == (cfg.family == "qwen3")


def test_logits_parity_left_padded_and_positions_far_out(pair):
    _, _, torch_model, model = pair
    tokens, mask, positions = _left_padded(np.random.default_rng(0))
    ref = hf_logits(torch_model, tokens, mask, positions)
    hidden = model(jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32), attn_mask=jnp.asarray(mask, bool))
    ours = np.asarray(model.logits(hidden))
    assert np.abs(ref).max() > 0.5
    np.testing.assert_array_less(np.abs(ours - ref)[mask.astype(bool)].max(), TOL)
    # positions past Llama 3's original context exercise every band of its RoPE scaling
    far = np.arange(300, 309)[None]
    toks = np.random.default_rng(1).integers(3, VOCAB, (1, 9))
    ref = hf_logits(torch_model, toks, positions=far)
    ours = np.asarray(model.logits(model(jnp.asarray(toks, jnp.int32), jnp.asarray(far, jnp.int32))))
    np.testing.assert_array_less(np.abs(ours - ref).max(), TOL)


def test_packed_segments_match_separate_sequences(pair):
    _, _, torch_model, model = pair
    rng = np.random.default_rng(2)
    lengths = [5, 6, 3]
    tokens = rng.integers(3, VOCAB, sum(lengths))[None]
    seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])[None]
    pos = np.concatenate([np.arange(n) for n in lengths])[None]
    ours = np.asarray(model.logits(model(jnp.asarray(tokens, jnp.int32), jnp.asarray(pos, jnp.int32),
                                         segment_ids=jnp.asarray(seg, jnp.int32))))[0]
    start = 0
    for n in lengths:
        ref = hf_logits(torch_model, tokens[:, start:start + n])[0]
        np.testing.assert_array_less(np.abs(ours[start:start + n] - ref).max(), TOL)
        start += n


def test_gradients_match_transformers(pair):
    """d/dparams of the summed next-token log-likelihood, mapped to HF names, against PyTorch autograd."""
    import torch

    _, _, torch_model, model = pair
    tokens = np.random.default_rng(3).integers(3, VOCAB, (2, 10))
    x, y = tokens[:, :-1], tokens[:, 1:]
    graphdef, params = nnx.split(model)

    def loglik(p):
        m = nnx.merge(graphdef, p)
        pos = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape)
        logp = jax.nn.log_softmax(m.logits(m(jnp.asarray(x, jnp.int32), pos)), -1)
        return jnp.take_along_axis(logp, jnp.asarray(y)[..., None], -1).sum()

    grads = jax.grad(loglik)(params)
    ours = hf.hf_state_dict(nnx.merge(graphdef, grads), dtype="float32")
    torch_model.zero_grad()
    logits = torch_model(torch.tensor(x)).logits
    torch.log_softmax(logits, -1).gather(-1, torch.tensor(y)[..., None]).sum().backward()
    ref = {n: p.grad.numpy() for n, p in torch_model.named_parameters()}
    assert set(ref) <= set(ours) | {"lm_head.weight"}
    for name, g in ref.items():
        if name == "lm_head.weight" and name not in ours:
            continue
        scale = max(1.0, float(np.abs(g).max()))
        np.testing.assert_allclose(ours[name], g, atol=2e-4 * scale, rtol=1e-3, err_msg=name)


def test_import_export_roundtrip_is_bit_exact_and_loads_in_transformers(pair, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    name, folder, torch_model, model = pair
    out = hf.export_hf(model, tmp_path / "export", dtype="float32", tokenizer_dir=folder)
    again = hf.load_hf_model(out, dtype="float32")
    assert again.config == model.config
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(reloaded).__name__ == FAMILIES[VARIANTS[name]["family"]].architecture
    tokens = np.random.default_rng(4).integers(3, VOCAB, (2, 9))
    np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(torch_model, tokens))


def test_kv_cache_decode_equals_full_forward(pair):
    _, _, _, model = pair
    tokens, mask, positions = _left_padded(np.random.default_rng(5))
    new = np.random.default_rng(6).integers(3, VOCAB, (3, 2))
    b, t = tokens.shape
    cache = KVCache.zeros(model.config, b, t + 4, dtype=jnp.float32)
    _, cache = model.decode(jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32), cache,
                            attn_mask=jnp.asarray(mask, bool), cache_is_empty=True)
    steps = []
    for i in range(2):
        h, cache = model.decode(jnp.asarray(new[:, i:i + 1], jnp.int32),
                                jnp.asarray(positions[:, -1:] + 1 + i, jnp.int32), cache,
                                attn_mask=jnp.ones((b, 1), bool))
        steps.append(np.asarray(h[:, 0]))
    full_mask = np.concatenate([mask, np.ones((b, 2), np.int64)], 1)
    full = np.asarray(model(jnp.asarray(np.concatenate([tokens, new], 1), jnp.int32),
                            jnp.asarray(np.clip(np.cumsum(full_mask, 1) - 1, 0, None), jnp.int32),
                            attn_mask=jnp.asarray(full_mask, bool)))
    np.testing.assert_allclose(np.stack(steps, 1), full[:, t:], atol=1e-5)


@pytest.mark.parametrize("engine", ["continuous", "static"])
def test_greedy_generate_equals_transformers(pair, engine):
    import torch

    _, _, torch_model, model = pair
    rng = np.random.default_rng(7)
    prompts = [list(rng.integers(3, VOCAB, n)) for n in (9, 5, 2)]
    t, new = max(map(len, prompts)), 8
    ids, mask = np.zeros((3, t), np.int64), np.zeros((3, t), np.int64)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):], mask[i, t - len(p):] = p, 1
    with torch.no_grad():
        ref = torch_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                   max_new_tokens=new, pad_token_id=0, eos_token_id=None)[:, t:].numpy()
    out = Sampler(model, cache_dtype="float32", min_prompt_bucket=8, pad_id=0, engine=engine).generate(
        prompts, max_new_tokens=new, config=Greedy())
    np.testing.assert_array_equal(out.tokens, ref)


def test_llama3_rope_frequencies_follow_the_published_rule():
    """float64 reference of Llama 3's frequency scaling (its three bands) against ours."""
    s = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    inv = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
    wavelen = 2 * np.pi / inv
    ref = np.where(wavelen < 8192 / 4, inv, inv / 8)
    mid = (wavelen >= 8192 / 4) & (wavelen <= 8192)
    smooth = (8192 / wavelen[mid] - 1) / (4 - 1)
    ref[mid] = (1 - smooth) * inv[mid] / 8 + smooth * inv[mid]
    assert mid.any() and (wavelen > 8192).any() and (wavelen < 2048).any()
    np.testing.assert_allclose(np.asarray(rope_frequencies(128, 500000.0, s)), ref, rtol=2e-6)


def test_presets_and_unsupported_families():
    sizes = {"qwen3_1p7b": 1.72e9, "qwen3_4b": 4.02e9, "llama3p2_3b": 3.21e9, "llama3p1_8b": 8.03e9}
    for name, n in sizes.items():
        assert abs(PRESETS[name]().num_params - n) / n < 0.01, name
    assert PRESETS["llama3p1_8b"]().rope_scaling.factor == 8.0 and not PRESETS["llama3p1_8b"]().tie_word_embeddings
    assert PRESETS["qwen3_4b"]().qk_norm and not PRESETS["qwen3_4b"]().attention_bias
    with pytest.raises(ValueError, match=r"model_type='mistral' is not supported \(supported: llama, qwen2, qwen3\)"):
        Qwen2Config.from_hf_config({"model_type": "mistral"})
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        Qwen2Config.from_hf_config({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                                    "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
    cfg = Qwen2Config.from_hf_config({"architectures": ["Qwen3ForCausalLM"], "vocab_size": 8, "hidden_size": 8,
                                      "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "head_dim": 8})
    assert cfg.family == "qwen3" and cfg.head_dim == 8
    assert json.dumps(PRESETS["llama3p2_3b"]().to_hf_config())  # serialisable
