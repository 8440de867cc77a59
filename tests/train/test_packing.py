"""Packing: a packed step equals the unpacked step on the same examples, for every SFT-family method; the
pipeline's packed batches keep CE and UL apart, cover every example once per epoch, use a bounded set of
shapes, and resume exactly; all-padding micro-batches are skipped."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from exploresft_jax import losses
from exploresft_jax.data import pipeline
from exploresft_jax.models.qwen2 import Qwen2Config, init_model
from exploresft_jax.train.objectives import EntropyRegOptions, OXAOptions
from exploresft_jax.train.optim import make_optimizer
from exploresft_jax.train.step import StepConfig, init_train_state, train_step

T = 32  # data.max_length
CFG = Qwen2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, dtype="float32")
# lr 1, eps 1, no clipping or decay: Adam's first update is -g / (|g| + 1), a smooth function of the gradient, so
# comparing updated parameters compares gradients (a small eps would turn near-zero entries into +-lr).
OPTIM = ml_collections.ConfigDict(dict(lr=1.0, schedule="constant", warmup_ratio=0.0, warmup_steps=0,
                                       min_lr_ratio=0.0, cosine_horizon_factor=1.0, b1=0.9, b2=0.95, eps=1.0,
                                       weight_decay=0.0, clip_norm=0.0))
CE_PER_STEP, UL_PER_STEP = 6, 6


def make_pool(n, seed, min_len=4, max_len=20):
    """A TokenizedSet of n random examples: a 2-3 token prompt, then response tokens; per-example weights."""
    rng = np.random.default_rng(seed)
    ids, targets = [], []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        ids.append(rng.integers(1, CFG.vocab_size, length).astype(np.int32))
        t = np.ones(length, np.int32)
        t[:int(rng.integers(2, 4))] = 0
        targets.append(t)
    return pipeline.TokenizedSet(ids, targets, rng.uniform(0.5, 1.5, n).astype(np.float32))


@pytest.fixture(scope="module")
def pools():
    return make_pool(12, 0), make_pool(10, 1)


def source(pools, mode, micro, per_micro=0, **kw):
    ce, ul = pools
    return pipeline.StepSource([(ce, CE_PER_STEP, False), (ul, UL_PER_STEP, True)], max_length=T,
                               micro_batches=micro, rows_per_micro=per_micro, pad_id=0, seed=5, packing=mode, **kw)


@functools.cache
def stepper(sc: StepConfig):
    tx, schedule = make_optimizer(OPTIM, 10)
    graphdef, state = init_train_state(init_model(CFG, seed=3), tx, sc)
    return jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, sc=sc)), state


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def run(sc, batch):
    fn, state = stepper(sc)
    new, m = fn(state, {k: jnp.asarray(v) for k, v in batch.items()})
    return flat(new.params) - flat(state.params), {k: float(v) for k, v in m.items()}


BASE = dict(chunk_size=8, vocab_chunk_size=16)
# "many": 6 micro-batches of 2 rows (the packed step fills about half and skips the rest);
# "one": a single micro-batch of 12 rows, for the quantities normalised per micro-batch (entropy_reg's top
# fraction, OXA's perplexity weights), which only agree when both layouts put all examples in one micro-batch.
CASES = {
    "sft": (dict(method="sft"), "many"),
    "dft": (dict(method="dft"), "many"),
    "curio": (dict(method="curio"), "many"),
    "entropy_reg": (dict(method="entropy_reg", options=EntropyRegOptions(coef=0.1, top_fraction=1.0)), "many"),
    "oxa": (dict(method="oxa", options=OXAOptions(ul_weight=0.5)), "many"),
    "oxa_data_weights": (dict(method="oxa", options=OXAOptions(ul_weight=0.5, sample_weighting="data")), "many"),
    "entropy_reg_top_half": (dict(method="entropy_reg", options=EntropyRegOptions(coef=0.1, top_fraction=0.5)), "one"),
    "oxa_perplexity_weights": (dict(method="oxa", options=OXAOptions(ul_weight=0.5, sample_weighting="perplexity",
                                                                   weight_alpha=1.0)), "one"),
}


def layouts(pools, kind):
    """(unpacked, packed) sources with the same step shape [micro, rows_per_micro, T]."""
    if kind == "many":
        return source(pools, "none", 6), source(pools, "examples", 6, 2)
    return source(pools, "none", 1), source(pools, "examples", 1, 12)


@pytest.mark.parametrize("case", list(CASES))
def test_packed_step_equals_unpacked_step(pools, case):
    kw, kind = CASES[case]
    sc = StepConfig(**BASE, **kw)
    plain, packed = layouts(pools, kind)
    for step in (0, 1):
        a, b = plain[step], packed[step]
        assert a["tokens"].shape == b["tokens"].shape
        assert b["segment_ids"].max() > 1  # rows really hold several examples
        busy = b["loss_mask"].reshape(len(b["tokens"]), -1).any(1)
        if kind == "many":
            assert not busy.all()  # ... and the packed step has all-padding micro-batches to skip
        da, ma = run(sc, a)
        db, mb = run(sc, b)
        assert ma["skipped"] == mb["skipped"] == 0 and ma["tokens"] == mb["tokens"]
        for k in ma:
            if k not in ("lr", "skipped"):
                np.testing.assert_allclose(mb[k], ma[k], rtol=2e-5, atol=1e-7, err_msg=f"{case} {k}")
        scale = np.abs(da).max()
        assert scale > 1e-3  # the step moved the parameters
        np.testing.assert_allclose(db, da, rtol=1e-4, atol=2e-5 * scale, err_msg=case)


def test_all_padding_micro_batches_are_skipped(pools):
    """Garbage (NaN example weights) in the all-padding micro-batches of a packed OXA step changes nothing: they
    are never computed (computing them would give 0 * NaN = NaN in the loss)."""
    sc = StepConfig(**BASE, **CASES["oxa_data_weights"][0])
    b = source(pools, "examples", 6, 2)[0]
    idle = ~b["loss_mask"].reshape(len(b["tokens"]), -1).any(1)
    assert idle.any()
    dirty = dict(b, weight=np.where(idle[:, None, None], np.nan, b["weight"]).astype(np.float32))
    clean_delta, clean_m = run(sc, b)
    dirty_delta, dirty_m = run(sc, dirty)
    assert dirty_m["skipped"] == 0 and dirty_m["loss"] == clean_m["loss"]
    np.testing.assert_array_equal(dirty_delta, clean_delta)
    fn, state = stepper(sc)
    hlo = fn.lower(state, {k: jnp.asarray(v) for k, v in b.items()}).as_text()
    assert "stablehlo.case" in hlo or "stablehlo.if" in hlo  # a conditional around the micro-batch's work


def test_token_form_losses_equal_row_form_on_packed_rows():
    """oxa_loss_from_token_weights / perplexity_token_weights on examples packed two per row equal the row-form
    losses on the same examples one per row."""
    rng = np.random.default_rng(0)
    n, L = 6, 7
    lp = -rng.uniform(0.05, 3.0, (n, L)).astype(np.float32)
    mask = (rng.uniform(size=(n, L)) < 0.8).astype(np.float32)
    mask[:, 0] = 1
    neg = np.array([0, 1, 0, 1, 0, 0], bool)
    w = rng.uniform(0.5, 1.5, n).astype(np.float32)
    # pack example pairs (0,2), (1,3), (4,5) into rows of 2L tokens as segments 1 and 2
    pairs = [(0, 2), (1, 3), (4, 5)]
    P = lambda x: np.stack([np.concatenate([x[i], x[j]]) for i, j in pairs])  # noqa: E731
    tok = lambda x: P(np.broadcast_to(np.asarray(x)[:, None], (n, L)))  # noqa: E731
    sn_rows = np.asarray(losses.row_sample_norm(mask))
    seg = np.concatenate([np.ones((3, L), np.int32), 2 * np.ones((3, L), np.int32)], 1)
    for neg_p, valid in ((tok(neg), None), (tok(neg), ~tok(neg))):
        ref = np.asarray(losses.perplexity_weights(lp, mask, alpha=0.7, valid=None if valid is None else ~neg))
        got = np.asarray(losses.perplexity_token_weights(P(lp), P(mask), P(sn_rows), seg, alpha=0.7, valid=valid))
        np.testing.assert_allclose(got, P(ref[:, None] * mask), rtol=1e-5, atol=1e-7)
    ref_loss, ref_m = losses.oxa_loss_from_logprobs(jnp.asarray(lp), mask, neg, ul_weight=0.3, sample_weight=w)
    got_loss, got_m = losses.oxa_loss_from_token_weights(jnp.asarray(P(lp)), P(mask), tok(neg), P(sn_rows),
                                                         ul_weight=0.3, sample_weight=tok(w))
    np.testing.assert_allclose(float(got_loss), float(ref_loss), rtol=1e-6)
    assert float(got_m["num_positive"]) == 4 and float(got_m["num_negative"]) == 2
    np.testing.assert_allclose(np.asarray(losses.segment_means(P(lp), P(mask), P(sn_rows), seg)),
                               P(np.broadcast_to((lp * mask).sum(1, keepdims=True) / mask.sum(1, keepdims=True),
                                                 (n, L))), rtol=1e-6)


def _segments(batch):
    """[(is_negative, tokens of the segment, sample_norm sum)] of every segment in a host batch."""
    out = []
    rows = {k: v.reshape(-1, v.shape[-1]) for k, v in batch.items()}
    for r in range(len(rows["tokens"])):
        seg = rows["segment_ids"][r]
        negs = set(rows["is_negative"][r][seg > 0].tolist())
        assert len(negs) <= 1  # CE and UL never share a row
        for s in range(1, seg.max() + 1):
            idx = np.where(seg == s)[0]
            assert idx[-1] - idx[0] + 1 == len(idx)  # a segment is contiguous
            np.testing.assert_array_equal(rows["positions"][r][idx], np.arange(len(idx)))
            out.append((int(rows["is_negative"][r][idx[0]]), tuple(rows["tokens"][r][idx]),
                        float(rows["sample_norm"][r][idx].sum())))
    return out


def test_examples_mode_keeps_counts_and_covers_each_example_once_per_epoch(pools):
    ce, ul = pools
    src = source(pools, "examples", 2, 2)
    ce_ids = {tuple(x): i for i, x in enumerate(ce.ids)}
    ul_ids = {tuple(x): i for i, x in enumerate(ul.ids)}
    seen = {0: [], 1: []}
    for step in range(10):  # 60 CE (5 epochs) and 60 UL (6 epochs) examples
        segs = _segments(src[step])
        for neg, toks, norm in segs:
            seen[neg].append((ul_ids if neg else ce_ids)[toks])
            assert norm == pytest.approx(1.0, rel=1e-6)
        assert sum(1 for s in segs if s[0] == 0) == CE_PER_STEP and sum(1 for s in segs if s[0]) == UL_PER_STEP
        # the plan says the same
        plan = [e for micro in src.plan(step) for e in micro if e is not None]
        assert sorted(i for p, m in plan if p == 0 for i in m) == sorted(seen[0][-CE_PER_STEP:])
    # whenever the steps so far hold a whole number of epochs of a pool, every example appeared that many times
    # (CE: every 2 steps; UL, 10 examples at 6 per step: every 5 steps)
    for pool_seen, size, per_step in ((seen[0], len(ce), CE_PER_STEP), (seen[1], len(ul), UL_PER_STEP)):
        for steps in range(1, 11):
            if steps * per_step % size == 0:
                counts = np.bincount(pool_seen[:steps * per_step], minlength=size)
                assert (counts == steps * per_step // size).all(), (steps, counts)
    # the packed and unpacked steps hold the same examples
    plain = source(pools, "none", 6)
    for step in (0, 3):
        assert sorted(_segments(plain[step])) == sorted(_segments(src[step]))


def test_distinct_shapes_stay_bounded():
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(np.log(40), 0.8, 400).astype(int) + 3, 256)
    pool = pipeline.TokenizedSet([np.broadcast_to(np.int32(1), (n,)) for n in lengths],
                                 [np.broadcast_to(np.int32(1), (n,)) for n in lengths], np.ones(len(lengths)))
    src = pipeline.StepSource([(pool, 64, False), (pool, 64, True)], max_length=256, micro_batches=2,
                              rows_per_micro=4, pad_id=0, seed=0, packing="examples")
    shapes = {len(src.plan(s)) for s in range(300)}
    assert shapes <= set(src.micro_buckets) and len(shapes) >= 2
    most = math.ceil(128 / 4)
    assert src.micro_buckets[-1] == most and len(src.micro_buckets) <= 1 + math.ceil(math.log2(most / 2))
    assert len(src.micro_buckets) == len(set(src.micro_buckets))


def test_tokens_mode_has_fixed_rows_and_keeps_pools_apart(pools):
    src = source(pools, "tokens", 3)
    shapes = set()
    for step in range(4):
        b = src[step]
        shapes.add(b["tokens"].shape)
        segs = _segments(b)
        assert len(segs) > CE_PER_STEP + UL_PER_STEP  # a token budget: more examples than rows
    assert shapes == {(3, 4, T)}


def test_tokens_mode_steps_are_the_same_read_from_many_threads(pools):
    """grain reads steps from several threads at once: the shared epoch boundaries stay in order and every step
    equals the one a single reader builds (a race here once gave wrong epochs and a boundary list that grew
    without end)."""
    from concurrent.futures import ThreadPoolExecutor

    steps = list(range(0, 240, 3))[::-1]  # far steps first: many epochs' boundaries are found concurrently
    with ThreadPoolExecutor(16) as ex:
        shared = source(pools, "tokens", 3)
        got = dict(zip(steps, ex.map(lambda i: shared[i], steps)))
    serial = source(pools, "tokens", 3)
    for step in sorted(steps):
        for k in pipeline.ROW_KEYS:
            np.testing.assert_array_equal(got[step][k], serial[step][k])
    for p in (0, 1):
        starts = shared._epoch_starts[p]
        assert starts == sorted(starts) and len(starts) == len(serial._epoch_starts[p])
        assert all(b - a == len(serial._epoch_units(p, e)) for e, (a, b) in enumerate(zip(starts, starts[1:])))


def test_resume_is_exact_in_examples_mode(pools):
    src = source(pools, "examples", 2, 2)
    it = iter(pipeline.make_dataset(src))
    [next(it) for _ in range(3)]
    state = it.get_state()
    expected = next(it)
    fresh = source(pools, "examples", 2, 2)  # a new process: the same step from (seed, step) alone
    it2 = iter(pipeline.make_dataset(fresh))
    it2.set_state(state)
    got = next(it2)
    for k in pipeline.ROW_KEYS:
        np.testing.assert_array_equal(got[k], expected[k])
        np.testing.assert_array_equal(fresh[3][k], expected[k])


def test_process_slices_partition_the_packed_batch(pools):
    full = source(pools, "examples", 2, 4)[1]
    parts = [source(pools, "examples", 2, 4, process_index=p, process_count=2)[1] for p in range(2)]
    for k in pipeline.ROW_KEYS:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts], axis=1), full[k])


def _base_config(**over):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("base_cfg", root / "configs" / "base.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.method, c.model.init, c.model.preset, c.tokenizer.train_bpe_vocab = "oxa", "random", "custom", 64
    c.data.synthetic, c.data.max_length, c.data.packing = "arithmetic", T, "examples"
    c.batch.global_size, c.batch.ul_size, c.batch.micro_batches = CE_PER_STEP, UL_PER_STEP, 2
    for k, v in over.items():
        node, leaf = k.split(".")
        del c[node][leaf]  # allow a change of type (e.g. the old boolean data.packing)
        c[node][leaf] = v
    return c


def test_batch_layout_matches_the_source(pools):
    from exploresft_jax.train.config import validate

    c = _base_config(**{"batch.rows_per_micro": 4})
    validate(c)  # packing is allowed for OXA
    layout = pipeline.batch_layout(c)
    src = source(pools, "examples", c.batch.micro_batches, pipeline.rows_per_micro(c))
    first = next(b for b in (src[s] for s in range(20)) if len(b["tokens"]) == src.micro_buckets[0])
    assert layout == {k: (v.shape, v.dtype.name) for k, v in first.items()}
    assert pipeline.batch_layout(_base_config(**{"data.packing": "none"}))["is_negative"] == ((2, 6, T), "int32")


@pytest.mark.parametrize("method", ["sft", "oxa", "curio", "entropy_reg", "dft"])
def test_config_allows_packing_for_every_sft_method(method):
    from exploresft_jax.train.config import validate

    for mode in ("none", "examples", "tokens", True, False):
        c = _base_config(**{"data.packing": mode})
        c.method = method
        validate(c)


@pytest.mark.parametrize("over,needle", [({"data.packing": "rows"}, "config.data.packing='rows'"),
                                         ({"batch.rows_per_micro": -1}, "config.batch.rows_per_micro"),
                                         ({"data.packing": "tokens", "batch.rows_per_micro": 5},
                                          "config.batch.rows_per_micro=5")])
def test_config_rejects_bad_packing_settings(over, needle):
    from exploresft_jax.train.config import validate

    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        validate(_base_config(**over))


def test_training_run_with_example_packing_matches_the_unpacked_run(tmp_path):
    """loop.run on the tiny OXA task: packing 'examples' (its micro axis bucketed) reproduces the unpacked run's
    losses, and logs far less padding."""
    from exploresft_jax.train import loop
    from exploresft_jax.train.logger import read_metrics

    from .test_train_loop import tiny_config

    over = {"optim.num_steps": 3, "log.every_steps": 1, "checkpoint.every_steps": 100, "data.max_length": 128}
    loop.run(tiny_config(tmp_path / "plain", "oxa", **over))
    cfg = tiny_config(tmp_path / "packed", "oxa", **over, **{"batch.micro_batches": 1, "batch.rows_per_micro": 8})
    del cfg.data["packing"]
    cfg.data.packing = "examples"
    loop.run(cfg)
    plain, packed = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("plain", "packed"))
    assert [r["step"] for r in plain] == [r["step"] for r in packed] == [1, 2, 3]
    np.testing.assert_allclose(packed[0]["loss"], plain[0]["loss"], rtol=1e-5)  # before any update
    for a, b in zip(plain, packed):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-3)
        np.testing.assert_allclose(b["ul"], a["ul"], rtol=1e-3)
        assert b["tokens"] == a["tokens"] and b["padding_frac"] < 0.6 * a["padding_frac"]
