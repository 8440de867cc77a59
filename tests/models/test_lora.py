"""LoRA adapters and the quantized base: the adapted model equals its merged weights, a fresh adapter changes
nothing, gradients through the adapter path equal those through the merged kernel, and quantization round-trips
within its resolution."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exploresft_jax.models import lora, qwen2
from exploresft_jax.train.step import split_model, weights

CFG = qwen2.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, dtype="float32", attention="dense")
TOKENS = (jnp.arange(14).reshape(2, 7) * 5) % 64
POS = jnp.broadcast_to(jnp.arange(7), (2, 7))

# bitsandbytes' NF4 table (the QLoRA paper's levels), an independent reference for nf4_levels()
NF4_PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


@functools.partial(jax.jit, static_argnums=0)
def _hidden_and_logits(graphdef, state):
    m = nnx.merge(graphdef, state)
    h = m(TOKENS, POS)
    return h, m.logits(h)


def run(model):
    """(hidden, logits) of `model` on TOKENS, jitted (eager dispatch is slow on the suite's 8 CPU devices)."""
    return _hidden_and_logits(*nnx.split(model))


def _lora_model(base_dtype="float32", rank=4, targets=lora.TARGETS, seed=1):
    return qwen2.init_model(CFG.replace(lora=lora.LoraSpec(rank=rank, alpha=8.0, targets=targets,
                                                           base_dtype=base_dtype)), seed=seed)


def _randomise_adapters(model, seed=3):
    """Non-zero B matrices (a fresh adapter has B = 0)."""
    graphdef, params, frozen = split_model(model)

    @jax.jit
    def draw(params):
        keys = iter(jax.random.split(jax.random.key(seed), 64))
        return jax.tree.map(lambda x: 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), params)

    return graphdef, draw(params), frozen


@functools.partial(jax.jit, static_argnums=0)
def _merged_arrays(graphdef, state):
    m = nnx.merge(graphdef, state)
    return ({n: m.layers.dense(n, m.config) for n in m.layers.param_names}, m.embed[...].astype(jnp.float32),
            m.final_norm[...].astype(jnp.float32))


def _dense_copy(model) -> qwen2.Qwen2:
    """A plain (no LoRA) float32 model whose kernels are `model`'s merged weights."""
    layers, embed, final_norm = _merged_arrays(*nnx.split(model))
    dense = qwen2.abstract_model(CFG)
    for name in dense.layers.param_names:
        getattr(dense.layers, name).set_value(layers[name])
    dense.embed.set_value(embed)
    dense.final_norm.set_value(final_norm)
    return dense


def test_nf4_levels_are_qloras():
    np.testing.assert_allclose(lora.nf4_levels(), NF4_PUBLISHED, atol=2e-7)


@pytest.mark.parametrize("mode,bound", [("int8", 0.5 / 127), ("nf4", 0.5 * np.diff(NF4_PUBLISHED).max())])
def test_quantization_round_trip(mode, bound):
    w = np.random.default_rng(0).standard_normal((3, 5, 256)).astype(np.float32)
    codes, scale = lora.quantize(jnp.asarray(w), mode)
    assert codes.shape == lora.codes_shape(w.shape, mode)[0] and scale.shape == (3, 5, 4)
    back = np.asarray(lora.dequantize(codes, scale, mode, jnp.float32))
    # per block: the error is at most half the widest gap between levels, times the block's absmax
    absmax = np.abs(w.reshape(3, 5, 4, 64)).max(-1, keepdims=True)
    err = np.abs(back - w).reshape(3, 5, 4, 64) / absmax
    assert err.max() <= bound + 1e-6
    np.testing.assert_array_equal(np.abs(back).reshape(3, 5, 4, 64).max(-1), absmax[..., 0])  # absmax exact
    if mode == "nf4":  # every value decodes to the level nearest to it (x its block's absmax)
        levels = np.asarray(NF4_PUBLISHED, np.float32)
        x = w.reshape(3, 5, 4, 64) / absmax
        nearest = levels[np.abs(x[..., None] - levels).argmin(-1)]
        np.testing.assert_allclose(back.reshape(3, 5, 4, 64) / absmax, nearest, atol=1e-6)


def test_fresh_adapters_leave_the_model_unchanged():
    base = qwen2.init_model(CFG, seed=1)
    model = _lora_model("float32", seed=2)
    graphdef, params, frozen = split_model(model)
    assert {p[-2].key for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]} == {
        n for t in lora.TARGETS for n in lora.adapter_names(t)}
    assert all(not np.any(np.asarray(params["layers"][lora.adapter_names(t)[1]][...])) for t in lora.TARGETS)
    for name in base.layers.param_names:  # the base's weights into the frozen part
        getattr(model.layers, name)[...] = getattr(base.layers, name)[...]
    model.embed[...] = base.embed[...]
    np.testing.assert_array_equal(np.asarray(run(model)[0]), np.asarray(run(base)[0]))


@pytest.mark.parametrize("base_dtype", ["float32", "int8", "nf4"])
def test_adapted_model_equals_its_merged_weights(base_dtype):
    graphdef, params, frozen = _randomise_adapters(_lora_model(base_dtype, targets=("q", "v", "o", "down")))
    model = nnx.merge(graphdef, weights(params, frozen))
    dense = _dense_copy(model)
    (h, logits), (h_dense, logits_dense) = run(model), run(dense)
    np.testing.assert_allclose(np.asarray(h), np.asarray(h_dense), atol=2e-5)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(logits_dense), atol=2e-5)


def test_adapter_gradients_equal_the_merged_kernels_chain_rule():
    """d loss / d(A, B) through the adapter path == through W + scale * A @ B (an independent formula)."""
    model = _lora_model("float32", targets=("q", "gate"))
    graphdef, params, frozen = _randomise_adapters(model)
    labels = jnp.roll(TOKENS, -1, axis=1)
    spec = model.config.lora_spec

    def nll(m):
        lp = jax.nn.log_softmax(m.logits(m(TOKENS, POS)), -1)
        return -jnp.take_along_axis(lp, labels[..., None], -1).mean()

    g_adapter = jax.jit(jax.grad(lambda p: nll(nnx.merge(graphdef, weights(p, frozen)))))(params)

    dense = _dense_copy(model)
    dgraph, dstate = nnx.split(dense)
    base = {t: model.layers.dense(lora.PROJECTIONS[t].kernel, model.config, merge=False) for t in spec.targets}

    def via_merged(ab):
        st = jax.tree.map(lambda x: x, dstate)
        for t in spec.targets:
            kernel = base[t] + lora.delta(ab[t][0], ab[t][1], t, spec)
            st["layers"][lora.PROJECTIONS[t].kernel] = st["layers"][lora.PROJECTIONS[t].kernel].replace(kernel)
        return nll(nnx.merge(dgraph, st))

    ab = {t: tuple(params["layers"][n][...] for n in lora.adapter_names(t)) for t in spec.targets}
    g_merged = jax.jit(jax.grad(via_merged))(ab)
    for t in spec.targets:
        for i, n in enumerate(lora.adapter_names(t)):
            got, want = np.asarray(g_adapter["layers"][n][...]), np.asarray(g_merged[t][i])
            assert np.abs(want).max() > 0
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7, err_msg=n)


def test_quantized_base_memory():
    """nf4 stores a weight in ~0.56 bytes per value (codes + a float32 scale per 64), int8 in ~1.06."""
    cfg = CFG.replace(hidden_size=128, intermediate_size=256, head_dim=32, vocab_size=512)
    for mode, per_value in (("int8", 1 + 4 / 64), ("nf4", 0.5 + 4 / 64)):
        m = qwen2.abstract_model(cfg.replace(lora=lora.LoraSpec(rank=4, base_dtype=mode)))
        stacked = {n: getattr(m.layers, n) for n in m.layers.stored_names}
        k = stacked["gate_kernel"].get_value()
        s = stacked["gate_kernel_scale"].get_value()
        nbytes = k.size * k.dtype.itemsize + s.size * s.dtype.itemsize
        assert nbytes == pytest.approx(per_value * 2 * 128 * 256)


def test_bad_spec_is_one_line():
    with pytest.raises(ValueError, match="targets"):
        lora.LoraSpec(rank=4, targets=("q", "lm_head"))
    with pytest.raises(ValueError, match="base_dtype"):
        lora.LoraSpec(rank=4, base_dtype="fp8")
