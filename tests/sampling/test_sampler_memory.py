"""The sampler's memory: a KV-cache row at its physical size, read from compiled programs, and the bfloat16 weight
copy of a float32 master (`cast_weights`), which must not change a single token or log-prob."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exploresft_jax import sharding as shd
from exploresft_jax.models import qwen2
from exploresft_jax.sampling import Sampler, SamplingConfig
from exploresft_jax.sampling import sampler as smp

CFG = qwen2.Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=4, num_heads=4,
                        num_kv_heads=2, head_dim=16, dtype="bfloat16")
PROMPTS, N, LP, NEW = 8, 4, 16, 240


@pytest.fixture(scope="module")
def model():
    return qwen2.init_model(CFG, seed=1)


def _memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    return {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}


def test_static_prefill_and_decode_hold_the_cache_once(model):
    """Tensor-parallel sampling rules on a (1, 4, 2) mesh: the cache [L, B, K, S, H] is split over the 4 batch
    devices and the 2 KV heads over the tensor axis, so a chip holds 1/8 of it; prefill writes into that one
    buffer (no second full-length cache of the prompts), and decode updates it in place (donated: aliased)."""
    mesh = shd.make_mesh((1, 4, 2))
    rules = shd.sample_rules(tensor_parallel=True)
    gd, params = nnx.split(model)
    s = Sampler(graphdef=gd, params=params, mesh=mesh, rules=rules, engine="static", max_rows=PROMPTS * N)
    b = PROMPTS * N
    put_m = lambda a: jax.device_put(a, s.mat_sharding)  # noqa: E731
    put_r = lambda a: jax.device_put(a, s.row_sharding)  # noqa: E731
    stop = jax.device_put(np.full(4, -1, np.int32), shd.replicated(mesh))
    args = (gd, s.params, put_m(np.ones((PROMPTS, LP), np.int32)), put_m(np.ones((PROMPTS, LP), bool)),
            put_r(np.repeat(np.arange(PROMPTS), N).astype(np.int32)), put_r(np.ones(b, bool)),
            put_r(np.arange(b, dtype=np.int32)), jax.random.key(0), stop)
    kw = dict(cfg=SamplingConfig(), max_new=NEW, cache_dtype=jnp.bfloat16, pad_id=0, weights=s.decode_weights)
    cache_per_chip = 2 * CFG.num_layers * b * CFG.num_kv_heads * (LP + NEW) * CFG.head_dim * 2 / 8  # k + v, bf16
    params_per_chip = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves((s.params, s.decode_weights)))
    with shd.use_rules(mesh, rules):
        pre = _memory(smp.prefill.lower(*args, **kw).compile())
        st = smp.prefill(*args, **kw)
        dec = _memory(smp.decode.lower(gd, s.params, st, stop, cfg=SamplingConfig(), pad_id=0,
                                       weights=s.decode_weights).compile())
    assert st.cache.k.addressable_shards[0].data.shape == (CFG.num_layers, b // 4, 1, LP + NEW, CFG.head_dim)
    # the state prefill returns is the cache plus small per-row arrays; its temporaries hold no full-length copy
    assert cache_per_chip <= pre["output"] <= 1.25 * cache_per_chip, (pre, cache_per_chip)
    assert pre["temp"] <= 0.5 * cache_per_chip, (pre, cache_per_chip)
    # decode: the donated state is aliased to the output, and beyond the weights and that state it needs less than
    # one more cache (the current layer's K/V read, 2/L of the cache, and the step's small arrays)
    assert dec["alias"] >= cache_per_chip and dec["output"] - dec["alias"] < 0.05 * cache_per_chip, dec
    footprint = dec["argument"] + dec["output"] - dec["alias"] + dec["temp"] - params_per_chip
    assert footprint <= 2.0 * cache_per_chip, (dec, cache_per_chip, params_per_chip)


def test_bfloat16_weight_copy_of_a_float32_master_changes_nothing(model):
    """A float32 master (as a full fine-tuning state keeps it) sampled through a bfloat16 copy: the same tokens,
    log-probs and entropies bit for bit, at half the weight bytes."""
    master = nnx.state(model)
    master32 = jax.tree.map(lambda x: x.astype(jnp.float32), master)
    gd = nnx.graphdef(model)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, CFG.vocab_size, n)) for n in (5, 12, 9)]
    kw = dict(max_new_tokens=12, n=2, config=SamplingConfig(temperature=0.9), key=3)
    outs, nbytes = [], []
    for wd in (None, "bfloat16"):
        s = Sampler(graphdef=gd, params=master32, weight_dtype=wd, min_prompt_bucket=8)
        nbytes.append(sum(x.nbytes for x in jax.tree.leaves(s.params)))
        outs.append(s.generate(prompts, **kw))
    assert nbytes[1] * 2 == nbytes[0]
    for name in ("tokens", "logprobs", "entropy", "lengths"):
        np.testing.assert_array_equal(getattr(outs[0], name), getattr(outs[1], name), err_msg=name)
    assert smp.cast_weights(master32, "bfloat16", lora_spec=object()) is master32  # LoRA: left as given


_TPU_PROGRAMS = """
from exploresft_jax.sampling import SamplingConfig

res = fit._sampler_programs(gd, params, cfg, mesh, rules, samples=8, max_rows=128, prompt_len=512,
                            new_tokens=16384 - 512, samp_cfg=SamplingConfig(), resident=0.0, notes=[],
                            common=dict(cfg_name="memory", target=target, mesh=mesh),
                            wanted={"prefill", "insert", "decode"}, say=lambda _m: None, prompts=32)
print(json.dumps([r.to_json() for r in res]))
"""


def test_continuous_engine_programs_hold_the_slot_caches_once():
    """The continuous engine's programs as `scripts/fit.py` compiles them for a v5e-8 (the TPU compiler, no TPU;
    tensor-parallel rules on a (1, 4, 2) mesh; in its own process, as fit.py runs), at a cache too large for on-chip
    memory (128 slots x 16,384 entries, 2 layers, 2 KV heads of 128: 0.25 GiB per chip): the slot caches
    [L, B, K, C, H] at 1/8 per chip, updated in place by insert and decode (aliased), and no program holds a second
    copy of them (the refill writes rows by a per-row select; the scatter it replaced needed a full-size temporary
    in the 28-layer grpo_tpu compile)."""
    from .tpu_compile import run_on_v5e8

    res = run_on_v5e8(_TPU_PROGRAMS)
    by = {r["program"]: r for r in res}
    assert list(by) == ["prefill", "insert", "decode"] and all(r["fits"] for r in res), res
    slots, lp, new = 128, 512, 16384 - 512
    assert by["decode"]["shapes"]["slots"] == [slots] and by["decode"]["shapes"]["cache_slots"] == [lp + new]
    cache = 2 * 2 * slots * 2 * (lp + new) * 128 * 2 / 8 / 2.0 ** 30  # k + v, L=2, K=2, H=128, bf16, per chip
    for name in ("insert", "decode"):
        r = by[name]
        assert r["alias_gib"] >= cache, (name, r["alias_gib"], cache)
        assert r["temp_gib"] <= 0.5 * cache, (name, r["temp_gib"], cache)  # no full-size copy of the slot caches
    assert by["prefill"]["resident_gib"] >= cache  # the slot caches stay on the chips beside a pool prefill
