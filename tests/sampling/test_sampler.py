"""Sampler: greedy parity with transformers `generate` (both engines), log-prob/entropy parity with the training
path, stop handling, reproducibility, sharding over 8 fake devices with batches that do not divide them. The
other tests use the default (continuous) engine; tests/sampling/test_continuous.py compares the engines."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exploresft_jax import losses
from exploresft_jax import sharding as shd
from exploresft_jax.models import hf
from exploresft_jax.sampling import FINISH_LENGTH, FINISH_STOP, Greedy, Sampler, SamplingConfig, TopK, TopP

from ..models.hf_fixtures import make_hf_qwen2

VOCAB = 128
PROMPT_LENGTHS = (11, 7, 3)
MAX_NEW = 10
PAD = 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sampler_model")
    torch_model = make_hf_qwen2(folder, vocab=VOCAB, hidden=32, inter=48, layers=2, heads=4, kv_heads=2, seed=3)
    model = hf.load_hf_model(folder, dtype="float32")
    sampler = Sampler(model, cache_dtype="float32", min_prompt_bucket=8, pad_id=PAD)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, VOCAB, n)) for n in PROMPT_LENGTHS]
    return torch_model, model, sampler, prompts


def _hf_greedy(torch_model, prompts, max_new, eos=None):
    import torch

    t = max(len(p) for p in prompts)
    ids = np.full((len(prompts), t), PAD, np.int64)
    mask = np.zeros((len(prompts), t), np.int64)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):], mask[i, t - len(p):] = p, 1
    with torch.no_grad():
        out = torch_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                   max_new_tokens=max_new, pad_token_id=PAD, eos_token_id=eos)
    gen = out[:, t:].numpy()
    return np.pad(gen, ((0, 0), (0, max_new - gen.shape[1])), constant_values=PAD)  # HF stops when all rows end


@pytest.mark.parametrize("engine", ["continuous", "static"])
def test_greedy_equals_hf_generate(setup, engine):
    torch_model, model, sampler, prompts = setup
    assert sampler.engine == "continuous"
    if engine == "static":
        sampler = Sampler(model, cache_dtype="float32", min_prompt_bucket=8, pad_id=PAD, engine="static")
    ref = _hf_greedy(torch_model, prompts, MAX_NEW)
    out = sampler.generate(prompts, max_new_tokens=MAX_NEW, config=Greedy())
    np.testing.assert_array_equal(out.tokens, ref)
    assert (out.lengths == MAX_NEW).all() and (out.finish_reason == FINISH_LENGTH).all()
    assert len({tuple(r) for r in ref}) == len(prompts)  # rows really differ: the comparison is not trivial


def test_greedy_stop_ids_equal_hf_generate(setup):
    torch_model, _, sampler, prompts = setup
    free = sampler.generate(prompts, max_new_tokens=MAX_NEW, config=Greedy()).tokens
    # a stop id that some row emits mid-way (first occurrence at column >= 1)
    row, col = next((r, c) for r in range(len(prompts)) for c in range(1, MAX_NEW) if free[r, c] not in free[r, :c])
    stop = int(free[row, col])
    # an id that is never emitted: a set of stop ids, not just one
    extra = next(i for i in range(1, VOCAB) if i not in free)
    ref = _hf_greedy(torch_model, prompts, MAX_NEW, eos=[stop, extra])
    out = sampler.generate(prompts, max_new_tokens=MAX_NEW, config=Greedy(), stop_ids=[extra, stop])
    np.testing.assert_array_equal(out.tokens, ref)
    for r in range(len(prompts)):
        hits = np.flatnonzero(np.isin(free[r], [stop, extra]))
        expect_len = hits[0] + 1 if hits.size else MAX_NEW
        assert out.lengths[r] == expect_len
        assert out.finish_reason[r] == (FINISH_STOP if hits.size else FINISH_LENGTH)
        assert (out.tokens[r, expect_len:] == PAD).all()
        assert (out.logprobs[r, expect_len:] == 0).all() and (out.entropy[r, expect_len:] == 0).all()
        assert (out.logprobs[r, :expect_len] < 0).all()
    assert out.lengths[row] == col + 1 and out.finish_reason[row] == FINISH_STOP


def _full_forward_stats(model, prompts, out, n, temperature):
    """Training-path statistics of the sampled tokens: one full forward over left-padded prompt + sample."""
    rows = out.tokens.shape[0]
    t = max(len(p) for p in prompts)
    seq = np.full((rows, t + MAX_NEW), PAD, np.int32)
    mask = np.zeros_like(seq, bool)
    for r in range(rows):
        p = prompts[r // n]
        seq[r, t - len(p):t], mask[r, t - len(p):t] = p, True
        seq[r, t:] = out.tokens[r]
        mask[r, t:t + out.lengths[r]] = True
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    hidden = model(jnp.asarray(seq), jnp.asarray(pos, jnp.int32), attn_mask=jnp.asarray(mask))
    h = hidden[:, t - 1:-1]  # hidden at position j scores token j + 1
    stats = losses.chunked_token_stats(h, model.head_weight(), jnp.asarray(out.tokens), chunk_size=4,
                                       temperature=temperature)
    entropy = losses.token_entropy(model.logits(h) / temperature)
    return np.asarray(stats["tempered_logprob"]), np.asarray(entropy), out.mask


@pytest.mark.parametrize("config", [TopK(20, temperature=0.7), SamplingConfig(temperature=1.0)],
                         ids=["topk20_t0.7", "t1.0"])
def test_logprobs_and_entropy_equal_training_path(setup, config):
    """The cached decode's distribution equals a full forward over prompt + generated tokens."""
    _, model, sampler, prompts = setup
    n = 2
    out = sampler.generate(prompts, n=n, max_new_tokens=MAX_NEW, config=config, stop_ids=[7], key=1)
    ref_lp, ref_ent, mask = _full_forward_stats(model, prompts, out, n, config.temperature)
    assert np.abs(out.logprobs - ref_lp)[mask].max() <= 1e-4
    assert np.abs(out.entropy - ref_ent)[mask].max() <= 1e-4
    assert ref_ent[mask].min() > 0.5  # a spread-out distribution: the check is not on a near-one-hot


def test_n_samples_reproducible_and_distinct(setup):
    _, _, sampler, prompts = setup
    cfg = TopP(0.95, temperature=1.0)
    a = sampler.generate(prompts, n=3, max_new_tokens=MAX_NEW, config=cfg, key=7)
    b = sampler.generate(prompts, n=3, max_new_tokens=MAX_NEW, config=cfg, key=7)
    c = sampler.generate(prompts, n=3, max_new_tokens=MAX_NEW, config=cfg, key=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(a.tokens, c.tokens)
    np.testing.assert_array_equal(a.prompt_index, np.repeat(np.arange(len(prompts)), 3))
    for p in range(len(prompts)):
        rows = {tuple(r) for r in a.tokens[3 * p:3 * p + 3]}
        assert len(rows) == 3  # the n samples of one prompt differ


def test_sharded_odd_batch_equals_single_device(setup):
    """8 devices, 3 prompts x 3 samples = 9 rows (not a multiple of 8), split over two batches; the result
    equals one device running all rows in one batch."""
    _, model, sampler, prompts = setup
    assert sampler.batch_devices == 8
    cfg = TopK(30, temperature=0.9)
    many = Sampler(model, cache_dtype="float32", min_prompt_bucket=8, pad_id=PAD, max_rows=6)
    one = Sampler(model, cache_dtype="float32", min_prompt_bucket=8, pad_id=PAD,
                  mesh=shd.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    a = many.generate(prompts, n=3, max_new_tokens=MAX_NEW, config=cfg, stop_ids=[7], key=3)
    b = one.generate(prompts, n=3, max_new_tokens=MAX_NEW, config=cfg, stop_ids=[7], key=3)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_bad_input(setup):
    _, _, sampler, prompts = setup
    with pytest.raises(ValueError, match="empty"):
        sampler.generate([[1, 2], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
