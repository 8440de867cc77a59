"""Continuous-batching engine: same tokens as the static engine (greedy and seeded sampling) on a mix of prompt
lengths, per-row limits and early stops; slot independence; trainer log-prob parity; input order; a queue much
longer than the slot count; per-row `max_new_tokens` forms."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from exploresft_jax import sharding as shd
from exploresft_jax.models import hf
from exploresft_jax.sampling import FINISH_LENGTH, FINISH_STOP, Greedy, Sampler, TopK

from ..models.hf_fixtures import make_hf_qwen2
from .test_sampler import MAX_NEW, _full_forward_stats

VOCAB = 128
PAD = 0
N = 3
LENGTHS = (11, 7, 3, 20, 5, 9)
LIMITS = (10, 3, 17, 6, 12, 8)  # per prompt
SAMPLED = TopK(20, temperature=0.9)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("continuous_model")
    make_hf_qwen2(folder, vocab=VOCAB, hidden=32, inter=48, layers=2, heads=4, kv_heads=2, seed=3)
    model = hf.load_hf_model(folder, dtype="float32")
    one = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(1, VOCAB, n)) for n in LENGTHS]

    def make(engine, **kw):
        kw = {"mesh": one, "max_rows": 4, "decode_chunk": 4, **kw}
        return Sampler(model, cache_dtype="float32", min_prompt_bucket=8, pad_id=PAD, engine=engine, **kw)

    static = make("static", max_rows=32)
    # stop ids: the two tokens a free sampled run emits most often, so rows stop at varied times
    free = static.generate(prompts, n=N, max_new_tokens=list(LIMITS), config=SAMPLED, key=5)
    counts = np.bincount(free.tokens[free.mask], minlength=VOCAB)
    counts[PAD] = 0
    stops = [int(t) for t in np.argsort(-counts)[:2]]
    ref = {name: static.generate(prompts, n=N, max_new_tokens=list(LIMITS), config=cfg, stop_ids=stops, key=5)
           for name, cfg in (("greedy", Greedy()), ("sampled", SAMPLED))}
    return dict(model=model, prompts=prompts, stops=stops, ref=ref, make=make, cont=make("continuous"))


def _run(sampler, env, cfg, prompts=None, limits=LIMITS, **kw):
    prompts = env["prompts"] if prompts is None else prompts
    return sampler.generate(prompts, n=N, max_new_tokens=list(limits), config=cfg, stop_ids=env["stops"], key=5, **kw)


def _rows(out, rows):
    return dataclasses.replace(out, **{f.name: getattr(out, f.name)[rows] for f in dataclasses.fields(out)})


def _assert_same(a, b):
    """Equal rows (b may be narrower when its limits are smaller: a holds pad beyond)."""
    w = b.tokens.shape[1]
    np.testing.assert_array_equal(a.tokens[:, :w], b.tokens)
    assert (a.tokens[:, w:] == PAD).all()
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.finish_reason, b.finish_reason)
    np.testing.assert_allclose(a.logprobs[:, :w], b.logprobs, atol=1e-5)
    np.testing.assert_allclose(a.entropy[:, :w], b.entropy, atol=1e-5)


@pytest.mark.parametrize("name", ["greedy", "sampled"])
def test_equals_static(env, name):
    """4 slots for 18 samples (queue longer than the slots), per-row limits and early stops: the continuous
    engine returns exactly the static engine's tokens, in input order."""
    ref = env["ref"][name]
    done = []
    out = _run(env["cont"], env, Greedy() if name == "greedy" else SAMPLED, progress=done.append)
    _assert_same(ref, out)
    np.testing.assert_array_equal(out.prompt_index, np.repeat(np.arange(len(LENGTHS)), N))
    limits = np.repeat(LIMITS, N)
    assert (out.lengths <= limits).all() and sum(done) == len(limits)
    stopped = out.finish_reason == FINISH_STOP
    assert stopped.any() and (~stopped).any()  # both ways of ending occur ...
    assert (out.lengths[stopped] < limits[stopped]).any()  # ... and rows stop early at varied times
    assert len(set(out.lengths.tolist())) >= 5
    assert (out.lengths[~stopped] == limits[~stopped]).all()
    assert (out.tokens[~out.mask] == PAD).all() and (out.logprobs[~out.mask] == 0).all()
    stats = env["cont"].last_stats
    assert stats.slots == 4 and stats.refills > 3 and stats.compactions >= 1


def test_slot_independence(env):
    """A sample's tokens depend on (key, prompt index, sample index) only: the same whatever the slot count,
    chunk length, refill policy or neighbours, and (greedy) whatever the prompt's position."""
    ref = env["ref"]["sampled"]
    p = env["prompts"]
    two = env["make"]("continuous", max_rows=2, decode_chunk=3, refill_min=2)
    _assert_same(ref, _run(two, env, SAMPLED))
    # prompt 0 alone, and among the others in a different order (prompt 0 keeps index 0, so its keys)
    alone = _run(env["cont"], env, SAMPLED, prompts=p[:1], limits=LIMITS[:1])
    _assert_same(_rows(ref, slice(0, N)), alone)
    order = [0, 5, 3, 1, 4, 2]
    shuffled = _run(env["cont"], env, SAMPLED, prompts=[p[i] for i in order], limits=[LIMITS[i] for i in order])
    _assert_same(_rows(ref, slice(0, N)), _rows(shuffled, slice(0, N)))
    # greedy: every prompt's rows equal in reversed order
    greedy = _run(env["cont"], env, Greedy(), prompts=p[::-1], limits=LIMITS[::-1])
    back = np.concatenate([np.arange(N) + N * (len(p) - 1 - i) for i in range(len(p))])
    _assert_same(_rows(env["ref"]["greedy"], back), greedy)


def test_refill_prefills_in_parts(env, monkeypatch):
    """A refill that needs more prompts than one prefill call takes (`continuous.PREFILL_TOKENS` padded prompt
    tokens; here 16, so one prompt of the 32-token bucket per call) prefills them in several calls: the same
    samples, with more prefill calls."""
    from exploresft_jax.sampling import continuous as cont

    wide = env["make"]("continuous", max_rows=8)
    _assert_same(env["ref"]["sampled"], _run(wide, env, SAMPLED))
    calls = wide.last_stats.prefills
    monkeypatch.setattr(cont, "PREFILL_TOKENS", 16)
    assert cont.prefill_prompts(32) == 1 and cont.prefill_prompts(8) == 2
    _assert_same(env["ref"]["sampled"], _run(wide, env, SAMPLED))
    assert wide.last_stats.prefills > calls


def test_sharded_equals_single_device(env):
    """8 devices (slots split over them) give the single-device tokens."""
    many = Sampler(env["model"], cache_dtype="float32", min_prompt_bucket=8, pad_id=PAD, max_rows=8, decode_chunk=4)
    assert many.engine == "continuous" and many.batch_devices == 8
    _assert_same(env["ref"]["sampled"], _run(many, env, SAMPLED))


def test_logprobs_equal_training_path(env):
    """Log-probs / entropies of the continuous decode equal a full forward over prompt + sample."""
    cfg = TopK(20, temperature=0.7)
    limits = [MAX_NEW, 4, MAX_NEW, 7, 2, MAX_NEW]
    out = env["cont"].generate(env["prompts"], n=2, max_new_tokens=limits, config=cfg, stop_ids=[7], key=1)
    assert out.tokens.shape[1] == MAX_NEW
    ref_lp, ref_ent, mask = _full_forward_stats(env["model"], env["prompts"], out, 2, cfg.temperature)
    assert np.abs(out.logprobs - ref_lp)[mask].max() <= 1e-4
    assert np.abs(out.entropy - ref_ent)[mask].max() <= 1e-4


def test_max_new_tokens_forms(env):
    s = env["cont"]
    p = env["prompts"][:2]
    per_prompt = s.generate(p, n=2, max_new_tokens=[3, 5], config=Greedy())
    per_row = s.generate(p, n=2, max_new_tokens=[3, 3, 5, 5], config=Greedy())
    as_int = s.generate(p, n=2, max_new_tokens=5, config=Greedy())
    _assert_same(per_prompt, per_row)
    np.testing.assert_array_equal(per_prompt.lengths, [3, 3, 5, 5])
    assert (per_prompt.finish_reason == FINISH_LENGTH).all() and per_prompt.tokens.shape == (4, 5)
    np.testing.assert_array_equal(as_int.tokens[:, :3], per_prompt.tokens[:, :3])
    with pytest.raises(ValueError, match="entries"):
        s.generate(p, n=2, max_new_tokens=[3, 4, 5], config=Greedy())
    with pytest.raises(ValueError, match=">= 1"):
        s.generate(p, n=2, max_new_tokens=[3, 0], config=Greedy())
    with pytest.raises(ValueError, match="engine"):
        Sampler(env["model"], engine="paged")
