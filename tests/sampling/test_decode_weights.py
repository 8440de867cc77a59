"""The compiled decode loops read each layer weight in place: no weight-sized buffer is produced inside their
while-loop bodies (the per-step copies that XLA's CPU compiler makes of weight slices taken from the stacked
[L, ...] parameters; see `Qwen2._decode_layers`). And the sampler's per-layer weights (`unstack_layers`) decode
exactly as the stacked ones for every family, LoRA and QLoRA included."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exploresft_jax import sharding as shd
from exploresft_jax.models import lora
from exploresft_jax.models.qwen2 import DecoderLayers, Qwen2Config, init_model
from exploresft_jax.sampling import Greedy, Sampler, TopK
from exploresft_jax.sampling import continuous as cont
from exploresft_jax.sampling import sampler as smp

# weight element counts 2048 (k, v), 4096 (q, o), 6144 (gate, up, down), 8192 (embedding / head); the cache
# (2 x 1 x 2 x 24 x 16 = 1536 per K or V) and activations (batch 1) are all smaller
TINY = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=16, dtype="float32", param_dtype="float32")
PROMPT, NEW = 16, 8
SKIP_OPS = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "dynamic-update-slice"}


def _computations(hlo: str) -> dict[str, list[str]]:
    comps, cur = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if m:
            cur = comps[m.group(1)] = []
        elif line.startswith("}"):
            cur = None
        elif cur is not None and " = " in line:
            cur.append(line.strip())
    return comps


def loop_body_buffers(hlo: str) -> list[tuple[str, int, str]]:
    """(name, elements, instruction) of every instruction that produces a buffer in a while-loop body of the
    compiled module (nested control flow included; the insides of fusions are not buffers)."""
    comps = _computations(hlo)
    todo = [m for ins in (i for c in comps.values() for i in c) for m in re.findall(r"\bbody=%?([\w.\-]+)", ins)]
    seen = set()
    while todo:
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for ins in comps[c]:
            if " fusion(" not in ins:
                todo += re.findall(r"(?:body|to_apply|true_computation|false_computation)=%?([\w.\-]+)", ins)
                todo += [n for group in re.findall(r"branch_computations=\{([^}]*)\}", ins)
                         for n in re.findall(r"%?([\w.\-]+)", group)]
    out = []
    for c in seen:
        for ins in comps[c]:
            m = re.match(r"(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]\S* ([\w\-]+)\(", ins)
            if m and m.group(3) not in SKIP_OPS:
                out.append((m.group(1), int(np.prod([int(d) for d in m.group(2).split(",") if d])), ins))
    return out


def weight_sized(hlo: str, cfg: Qwen2Config) -> list[str]:
    """The loop-body instructions whose buffer has as many elements as one layer's weight matrix or the
    embedding: a weight (slice) copied, transposed or converted on every step."""
    d, n, k, h, f, v = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size,
                        cfg.vocab_size)
    sizes = {d * n * h, d * k * h, d * f, v * d}
    return [ins[:200] for _, size, ins in loop_body_buffers(hlo) if size in sizes]


def _sampler(model, unstack, head=None):
    mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    return Sampler(model, mesh=mesh, cache_dtype="float32", max_rows=1, min_prompt_bucket=PROMPT, pad_id=0,
                   unstack_layers=unstack, transpose_head=head, decode_chunk=4)


def _static_decode_hlo(sampler) -> str:
    gd, params, weights = sampler.graphdef, sampler.params, sampler.decode_weights
    stop = jnp.full((4,), -1, jnp.int32)
    b = 1
    with shd.use_rules(sampler.mesh, sampler.rules):
        st = jax.eval_shape(lambda: smp.prefill(
            gd, params, jnp.ones((b, PROMPT), jnp.int32), jnp.ones((b, PROMPT), bool), jnp.zeros((b,), jnp.int32),
            jnp.ones((b,), bool), jnp.zeros((b,), jnp.int32), jax.random.key(0), stop, cfg=Greedy(), max_new=NEW,
            cache_dtype=jnp.float32, pad_id=0, weights=weights))
        return smp.decode.lower(gd, params, st, stop, cfg=Greedy(), pad_id=0, weights=weights).compile().as_text()


def _continuous_decode_hlo(sampler) -> str:
    gd, params, weights = sampler.graphdef, sampler.params, sampler.decode_weights
    cfg = TINY
    build = cont._init_fn(sampler.mesh, sampler.rules, cfg, 1, PROMPT + NEW, 1, NEW, jnp.float32, 0, 2, PROMPT)
    st, _ = jax.eval_shape(build)
    with shd.use_rules(sampler.mesh, sampler.rules):
        return cont._decode_chunk.lower(gd, params, st, jax.random.key(0), jnp.full((4,), -1, jnp.int32),
                                        jnp.int32(1), weights, cfg=Greedy(), steps=4,
                                        window=PROMPT + NEW).compile().as_text()


@pytest.fixture(scope="module")
def tiny_model():
    return init_model(TINY, seed=0)


@pytest.mark.parametrize("program", ["static", "continuous"])
def test_decode_loop_copies_no_weight(tiny_model, program):
    sampler = _sampler(tiny_model, None)
    assert sampler.unstack_layers and sampler.transpose_head  # the defaults on CPU
    hlo = (_static_decode_hlo if program == "static" else _continuous_decode_hlo)(sampler)
    assert loop_body_buffers(hlo), "no while-loop body found: the check would prove nothing"
    assert weight_sized(hlo, TINY) == []


def test_stacked_layers_are_copied_per_step_on_cpu(tiny_model):
    """The check above sees the copies: XLA's CPU compiler copies each layer's weight slices out of the stacked
    arrays inside the scan (why the sampler unstacks them). If a future XLA reads them in place, this fails:
    the unstacking may then be dropped."""
    copies = weight_sized(_static_decode_hlo(_sampler(tiny_model, False)), TINY)
    assert len(copies) >= 3, copies  # at least gate, up, down


def test_tpu_decode_loop_copies_no_weight():
    """On TPU (compile-only devices of libtpu) the sampler keeps the stacked weights by default: the TPU
    compiler fuses each layer's weight slice into the matmul that reads it, so the scanned loop copies none
    (per-layer arrays would be copied into another memory space there instead). float32 parameters with
    bfloat16 compute: no per-step cast either."""
    pytest.importorskip("libtpu")
    from flax import nnx

    from exploresft_jax.models.qwen2 import abstract_model
    from exploresft_jax.train import fit

    class _Abstract(Sampler):  # the sampler's own defaults, with abstract parameters (as fit.py builds it)
        def update_params(self, params):
            self.params = params

    cfg = TINY.replace(dtype="bfloat16")
    target = fit.resolve_target("v5e-1")
    mesh = shd.make_mesh((1, -1, 1), devices=target.devices)
    rules = shd.sample_rules()
    gd, params = nnx.split(abstract_model(cfg))
    params = fit._place(params, shd.state_shardings(params, mesh, rules))
    sampler = _Abstract(graphdef=gd, params=params, mesh=mesh, rules=rules, max_rows=1)
    assert not sampler.unstack_layers and sampler.decode_weights.layers is None
    rep = shd.replicated(mesh)
    sds = jax.ShapeDtypeStruct
    stop = sds((4,), jnp.int32, sharding=rep)
    with shd.use_rules(mesh, rules):
        st = jax.eval_shape(lambda: smp.prefill(
            gd, params, jnp.ones((1, PROMPT), jnp.int32), jnp.ones((1, PROMPT), bool), jnp.zeros((1,), jnp.int32),
            jnp.ones((1,), bool), jnp.zeros((1,), jnp.int32), jax.random.key(0), jnp.full((4,), -1, jnp.int32),
            cfg=Greedy(), max_new=NEW, cache_dtype=jnp.bfloat16, pad_id=0))
        st = jax.tree.map(lambda x: sds(x.shape, x.dtype, sharding=rep), st)
        hlo = smp.decode.lower(gd, params, st, stop, cfg=Greedy(), pad_id=0).compile().as_text()
    assert loop_body_buffers(hlo)
    assert weight_sized(hlo, cfg) == []


def _randomize_adapters(model, seed):
    rng = np.random.default_rng(seed)
    for name in model.layers.stored_names:
        if name.endswith("_lora_b"):
            var = getattr(model.layers, name)
            var.value = jnp.asarray(0.05 * rng.standard_normal(var.shape), var.dtype)


CASES = {
    "qwen3": dict(family="qwen3"),
    "llama": dict(family="llama", tie_word_embeddings=False),
    "qlora_nf4": dict(lora=lora.LoraSpec(rank=4, base_dtype="nf4")),
    "lora_int8": dict(lora=lora.LoraSpec(rank=4, targets=("q", "o", "down"), base_dtype="int8")),
}


def _check_layer_params(layers, model, cfg):
    """One dict per layer with every stored weight, floating ones in the compute dtype (scales excepted)."""
    assert len(layers) == cfg.num_layers
    assert set(layers[0]) == set(model.layers.stored_names) >= set(DecoderLayers.names(cfg))
    for i, layer in enumerate(layers):
        for name, w in layer.items():
            stacked = getattr(model.layers, name)[...]
            assert w.shape == stacked.shape[1:]
            if jnp.issubdtype(stacked.dtype, jnp.floating) and not name.endswith("_scale"):
                assert w.dtype == jnp.dtype(cfg.dtype), name
                np.testing.assert_array_equal(np.asarray(w), np.asarray(stacked[i].astype(w.dtype)))
            else:
                assert w.dtype == stacked.dtype, name
                np.testing.assert_array_equal(np.asarray(w), np.asarray(stacked[i]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_unstacked_layers_decode_as_stacked(case):
    """Same sampled tokens and log-probs from the decode copies (per-layer weights, transposed head) as from
    the model's own stacked weights and head (static engine for qwen3 and int8 LoRA, continuous for llama and
    nf4 QLoRA; llama's head is untied)."""
    cfg = TINY.replace(**CASES[case])
    model = init_model(cfg, seed=1)
    if cfg.lora_spec is not None:
        _randomize_adapters(model, 2)
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(1, cfg.vocab_size, n)) for n in (5, 13)]
    engine = "continuous" if case in ("llama", "qlora_nf4") else "static"
    outs = {}
    for unstack in (False, True):
        s = _sampler(model, unstack, head=unstack)
        s.max_rows, s.engine = 4, engine
        outs[unstack] = s.generate(prompts, n=2, max_new_tokens=NEW, config=TopK(8, temperature=1.0), key=4)
        assert (s.decode_weights.layers is not None) == unstack == (s.decode_weights.head_t is not None)
    np.testing.assert_array_equal(outs[True].tokens, outs[False].tokens)
    np.testing.assert_allclose(outs[True].logprobs, outs[False].logprobs, atol=1e-5)
    copies = _sampler(model, True, head=True).decode_weights
    _check_layer_params(copies.layers, model, cfg)
    np.testing.assert_array_equal(np.asarray(copies.head_t), np.asarray(model.head_weight()).T)


def test_unstacked_layers_in_compute_dtype():
    """float32 parameters with bfloat16 compute: the per-layer weights are the stacked ones cast once (every
    use in a layer casts to the compute dtype first, so decoding gives the same numbers; it cannot run here:
    XLA's CPU runtime has no bf16 dot with a float32 result), and the compiled decode loop has no per-step cast
    or copy of a weight."""
    cfg = TINY.replace(dtype="bfloat16")
    model = init_model(cfg, seed=5)
    sampler = _sampler(model, True)
    _check_layer_params(sampler.decode_weights.layers, model, cfg)
    assert weight_sized(_static_decode_hlo(sampler), cfg) == []
