"""GRPO variants through the train step's micro-batch loss (`step.micro_loss`) with a tiny model: GSPO, CISPO, the
sampler/trainer mismatch corrections and the high-entropy-token selection against a reference written from full
logits; micro-batch invariance; today's objective unchanged at the defaults; the new config knobs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exploresft_jax import losses
from exploresft_jax.configs.base import get_config
from exploresft_jax.models.qwen2 import Qwen2Config, init_model
from exploresft_jax.train.config import validate
from exploresft_jax.train.objectives import OBJECTIVES, GRPOOptions, MicroBatch
from exploresft_jax.train.step import StepConfig, batch_denominators, micro_loss, token_view

CFG = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, dtype="float32")
TEMP = 0.8
ROWS, T, G = 8, 12, 4
HALVES = (slice(0, ROWS // 2), slice(ROWS // 2, ROWS))

# Three option sets cover every variant (one compile each per batch shape).
VARIANTS = {
    "gspo_seqmask": GRPOOptions(rollout_temperature=TEMP, policy_loss="gspo", gspo_clip_low=0.02, gspo_clip_high=0.03,
                                rollout_correction="sequence_mask", rollout_correction_threshold=1.5, kl_coef=0.05,
                                dual_clip=3.0, aggregation="seq-mean-token-mean", on_policy=False),
    "cispo_trunc_entropy": GRPOOptions(rollout_temperature=TEMP, policy_loss="cispo", cispo_clip_high=0.1,
                                       rollout_correction="token_truncate", rollout_correction_threshold=1.2,
                                       entropy_token_fraction=0.5, aggregation="token-mean", on_policy=True),
    "ppo_tokmask": GRPOOptions(rollout_temperature=TEMP, rollout_correction="token_mask",
                               rollout_correction_threshold=1.3, dual_clip=1.5, clip_high=0.28, kl_coef=0.05,
                               aggregation="token-mean", on_policy=False),
}


def _forward(graphdef, params, mb):
    model = nnx.merge(graphdef, params)
    seg = mb["segment_ids"]
    return model, model(mb["tokens"], mb["positions"], segment_ids=seg, attn_mask=seg > 0)


@functools.partial(jax.jit, static_argnums=0)
def full_logits_stats(graphdef, params, mb):
    """Tempered log-probs of the labels and tempered entropies from full [rows, T, V] logits."""
    model, h = _forward(graphdef, params, mb)
    logq = jax.nn.log_softmax(model.logits(h) / TEMP, axis=-1)
    lp = jnp.take_along_axis(logq, mb["labels"][..., None], -1)[..., 0]
    return lp, -jnp.sum(jnp.exp(logq) * logq, -1)


@pytest.fixture(scope="module")
def setup():
    model = init_model(CFG, seed=0)
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    b = {k: np.zeros((ROWS, T), np.int32) for k in ("tokens", "labels", "loss_mask", "positions", "segment_ids")}
    for i in range(ROWS):
        p, n = int(rng.integers(2, 5)), int(rng.integers(3, 8))
        seq = rng.integers(3, 40, p + n)
        b["tokens"][i, :p + n] = seq
        b["labels"][i, :p + n - 1] = seq[1:]
        b["positions"][i, :p + n] = np.arange(p + n)
        b["segment_ids"][i, :p + n] = 1
        b["loss_mask"][i, p - 1:p - 1 + n] = 1
    b["is_negative"] = np.zeros(ROWS, np.int32)
    b["weight"] = np.ones(ROWS, np.float32)
    rewards = np.array([1, 0, 0, 1, 0, 1, 1, 1], np.float32)
    b["advantages"] = np.array(losses.grpo_advantages(jnp.asarray(rewards), G))  # no zero-variance group
    mb = {k: jnp.asarray(v) for k, v in b.items()}
    lp, _ = full_logits_stats(graphdef, params, mb)
    m = b["loss_mask"].astype(np.float32)
    lp = np.asarray(lp)
    b["old_logp"] = ((lp + rng.normal(scale=0.25, size=lp.shape)) * m).astype(np.float32)
    b["sampler_logp"] = ((lp + rng.normal(scale=0.3, size=lp.shape)) * m).astype(np.float32)
    b["ref_logp"] = ((lp + rng.normal(scale=0.2, size=lp.shape)) * m).astype(np.float32)
    b["sampler_logp"][2] = ((lp[2] - 0.02) * m[2]).astype(np.float32)  # a sequence the sequence mask keeps
    mb = {k: jnp.asarray(v) for k, v in b.items()}
    den = batch_denominators({k: v[None] for k, v in mb.items()})
    return graphdef, params, mb, den


def part(mb, s):
    return {k: v[s] for k, v in mb.items()}


def entropy_selection(graphdef, params, mb, fraction):
    """The ceil(fraction * n) highest tempered entropies among the micro-batch's n response tokens (NumPy)."""
    _, ent = full_logits_stats(graphdef, params, mb)
    m, ent = np.asarray(mb["loss_mask"]) > 0, np.asarray(ent)
    k = int(np.ceil(fraction * m.sum()))
    return (m & (ent >= np.sort(ent[m])[::-1][k - 1])).astype(np.float32)


def reference_loss(graphdef, params, mb, den, o: GRPOOptions, selected):
    """The micro-batch loss from full logits, each variant written out from its paper's formula (token-mean or
    seq-mean-token-mean over the whole step's denominators); `selected`: the high-entropy tokens, or ones."""
    lp, _ = full_logits_stats(graphdef, params, mb)
    m = mb["loss_mask"].astype(jnp.float32)
    A = mb["advantages"][:, None]
    old = jax.lax.stop_gradient(lp) if o.on_policy else mb["old_logp"]
    log_rho = jax.lax.stop_gradient(old) - mb["sampler_logp"]
    rho, C = jnp.exp(log_rho), o.rollout_correction_threshold
    if o.rollout_correction == "token_truncate":
        w = jnp.minimum(rho, C)
    elif o.rollout_correction == "token_mask":
        w = jnp.where(rho > C, 0.0, rho)
    elif o.rollout_correction == "sequence_mask":
        seq = jnp.exp(jnp.sum(log_rho * m, -1, keepdims=True))
        w = jnp.where(seq > C, 0.0, seq) * jnp.ones_like(m)
    else:
        w = jnp.ones_like(m)
    w = w * selected
    if o.policy_loss == "gspo":  # s_i = exp(mean_t log(pi / pi_old)), GSPO-token: sg[s_i] pi / sg[pi]
        s = jnp.exp(jnp.sum((lp - old) * m, -1, keepdims=True) / jnp.sum(m, -1, keepdims=True))
        r = jax.lax.stop_gradient(s) * jnp.exp(lp - jax.lax.stop_gradient(lp))
        pg = jnp.maximum(-A * r, -A * jnp.clip(r, 1 - o.gspo_clip_low, 1 + o.gspo_clip_high))
    elif o.policy_loss == "cispo":  # -sg(clip(r)) A log pi
        r = jnp.exp(lp - old)
        pg = -jax.lax.stop_gradient(jnp.clip(r, 1 - o.cispo_clip_low, 1 + o.cispo_clip_high)) * A * lp
    else:
        r = jnp.exp(lp - old)
        pg = jnp.maximum(-A * r, -A * jnp.clip(r, 1 - o.clip_low, 1 + o.clip_high))
        if o.dual_clip > 1:
            pg = jnp.where(A < 0, jnp.minimum(pg, -A * o.dual_clip), pg)
    d = lp - mb["ref_logp"]
    per_token = pg * w + o.kl_coef * (jnp.exp(-d) + d - 1)
    if o.aggregation == "seq-mean-token-mean":
        return jnp.sum(jnp.sum(per_token * m, -1) / jnp.maximum(jnp.sum(m, -1), 1)) / den["seqs"]
    return jnp.sum(per_token * m) / den["tokens"]


@pytest.fixture(scope="module")
def compiled(setup):
    graphdef, params, mb, den = setup
    cache = {}

    def step_vg(name):
        if name not in cache:
            sc = StepConfig(method="grpo", chunk_size=4, vocab_chunk_size=16, options=VARIANTS[name])
            fn = functools.partial(micro_loss, graphdef=graphdef, sc=sc)
            cache[name] = jax.jit(jax.value_and_grad(lambda p, mb, den: fn(p, None, mb, den), has_aux=True))
        return cache[name]

    return step_vg


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_matches_reference_per_micro_batch(setup, compiled, name):
    """Each half of the batch (a micro-batch, global denominators): the step's loss and parameter gradient equal
    the full-logits reference."""
    graphdef, params, mb, den = setup
    o = VARIANTS[name]
    ref_vg = jax.jit(jax.value_and_grad(lambda p, mb, sel: reference_loss(graphdef, p, mb, den, o, sel)))
    for s in HALVES:
        (loss, _), g = compiled(name)(params, part(mb, s), den)
        sel = entropy_selection(graphdef, params, part(mb, s), o.entropy_token_fraction)
        if o.entropy_token_fraction < 1:
            assert 0 < sel.sum() < np.asarray(mb["loss_mask"][s]).sum()
        want, g_ref = ref_vg(params, part(mb, s), sel)
        assert abs(float(want)) > 1e-4
        np.testing.assert_allclose(loss, want, rtol=2e-5, atol=1e-7)
        gf, rf = _flat(g), _flat(g_ref)
        assert np.abs(rf).max() > 1e-4
        np.testing.assert_allclose(gf, rf, atol=2e-5 * np.abs(rf).max())


@pytest.mark.parametrize("name", ["gspo_seqmask", "ppo_tokmask"])
def test_variant_invariant_to_micro_batching(setup, compiled, name):
    """Without the entropy selection every variant is row-local: two micro-batches sum to the one-batch step."""
    graphdef, params, mb, den = setup
    (full, sums), g_full = compiled(name)(params, mb, den)
    halves = [compiled(name)(params, part(mb, s), den) for s in HALVES]
    np.testing.assert_allclose(sum(h[0][0] for h in halves), full, rtol=1e-5, atol=1e-7)
    g_sum = jax.tree.map(lambda a, b: a + b, halves[0][1], halves[1][1])
    np.testing.assert_allclose(_flat(g_sum), _flat(g_full), atol=1e-5 * np.abs(_flat(g_full)).max())
    metrics = OBJECTIVES["grpo"].metrics(VARIANTS[name])
    for k, mdef in metrics.items():  # each metric accumulates over micro-batches to the one-batch value
        got = functools.reduce(mdef.combine, [h[0][1][k] for h in halves])
        np.testing.assert_allclose(got, sums[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_correction_metrics(setup, compiled):
    """mismatch_kl, the capped fraction and the ratio extremes from the step's sums equal NumPy's."""
    graphdef, params, mb, den = setup
    (_, sums), _ = compiled("ppo_tokmask")(params, mb, den)
    m = np.asarray(mb["loss_mask"], bool)
    lr = (np.asarray(mb["old_logp"], np.float64) - np.asarray(mb["sampler_logp"]))[m]
    rho = np.exp(lr)
    n = float(den["tokens"])
    np.testing.assert_allclose(sums["mismatch_kl"] / n, np.mean(rho - 1 - lr), rtol=1e-5)
    np.testing.assert_allclose(sums["rollout_is_capped_frac"] / n, np.mean(rho > 1.3), rtol=1e-6)
    np.testing.assert_allclose(sums["rollout_is_weight_mean"] / n, np.mean(np.where(rho > 1.3, 0, rho)), rtol=1e-5)
    np.testing.assert_allclose([sums["rollout_is_max"], sums["rollout_is_min"]], [rho.max(), rho.min()], rtol=1e-5)
    assert 0 < np.mean(rho > 1.3) < 1
    (_, sums), _ = compiled("gspo_seqmask")(params, mb, den)
    seq = np.exp([((np.asarray(mb["old_logp"][i], np.float64) - np.asarray(mb["sampler_logp"][i])) * m[i]).sum()
                  for i in range(ROWS)])
    np.testing.assert_allclose([sums["rollout_is_max"], sums["rollout_is_min"]], [seq.max(), seq.min()], rtol=1e-5)
    capped = np.repeat(seq > 1.5, m.sum(1))
    assert 0 < capped.mean() < 1
    np.testing.assert_allclose(sums["rollout_is_capped_frac"] / n, capped.mean(), rtol=1e-6)


def test_entropy_selection_is_per_micro_batch(setup, compiled):
    graphdef, params, mb, den = setup
    for s in HALVES:
        (_, sums), _ = compiled("cispo_trunc_entropy")(params, part(mb, s), den)
        n = float(jnp.sum(mb["loss_mask"][s]))
        assert float(sums["entropy_selected_frac"]) == np.ceil(0.5 * n)  # the top half of its own tokens


def _previous_grpo_objective(p: MicroBatch, o: GRPOOptions):
    """The GRPO objective as it was before the variants (loss part), for the no-change check."""
    st = p.stats(temperature=o.rollout_temperature)
    logp = st["tempered_logprob"]
    mb, m = p.batch, p.tokens["mask"]
    old = jax.lax.stop_gradient(logp) if o.on_policy else mb["old_logp"]
    return losses.grpo_loss(
        logp, old, mb["advantages"], m, ref_logp=mb["ref_logp"] if o.kl_coef else None, clip_low=o.clip_low,
        clip_high=o.clip_high, dual_clip=o.dual_clip if o.dual_clip > 1 else None, kl_coef=o.kl_coef,
        kl_estimator=o.kl_estimator, aggregation=o.aggregation, max_len=o.max_len or None,
        num_tokens=p.den["tokens"], num_seqs=p.den["seqs"])[0]


def test_defaults_reproduce_the_previous_objective(setup):
    """rollout_correction=none, policy_loss=ppo_clip, entropy_token_fraction=1: the loss, its gradient and the
    metric set are those of the objective before the variants."""
    graphdef, params, mb, den = setup
    o = GRPOOptions(rollout_temperature=TEMP, dual_clip=3.0, kl_coef=0.05, clip_high=0.28, on_policy=False)
    assert (o.policy_loss, o.rollout_correction, o.entropy_token_fraction) == ("ppo_clip", "none", 1.0)
    sc = StepConfig(method="grpo", chunk_size=4, vocab_chunk_size=16, options=o)
    now = jax.jit(jax.value_and_grad(lambda p: micro_loss(p, None, mb, den, graphdef=graphdef, sc=sc)[0]))

    def before(p):
        model, h = _forward(graphdef, p, mb)
        pm = MicroBatch(hidden=h, head_weight=model.head_weight(), batch=mb, tokens=token_view(mb), den=den,
                        teacher_forward=None, chunk_size=4, vocab_chunk_size=16)
        return _previous_grpo_objective(pm, o)

    (l_now, g_now), (l_before, g_before) = now(params), jax.jit(jax.value_and_grad(before))(params)
    np.testing.assert_allclose(l_now, l_before, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(_flat(g_now), _flat(g_before), rtol=1e-6, atol=1e-9)
    assert set(OBJECTIVES["grpo"].metrics(o)) == {
        "clipfrac_low", "clipfrac_high", "clipfrac_dual", "ratio_mean", "entropy", "entropy_untempered",
        "logprob_gap", "nll", "ratio_max", "ratio_min", "kl"}


# --- config ---------------------------------------------------------------------------------------------------------

def _grpo_config():
    c = get_config()
    c.method = "grpo"
    c.model.init, c.model.preset, c.tokenizer.train_bpe_vocab = "random", "custom", 64
    return c


def test_options_from_config_read_the_new_knobs():
    c = _grpo_config()
    o = GRPOOptions.from_config(c)
    assert (o.policy_loss, o.rollout_correction, o.rollout_correction_threshold, o.entropy_token_fraction) == (
        "ppo_clip", "none", 2.0, 1.0)
    assert (o.gspo_clip_low, o.gspo_clip_high, o.cispo_clip_low, o.cispo_clip_high) == (3e-4, 4e-4, 1.0, 4.0)
    assert o.policy_clip == (c.grpo.clip_low, c.grpo.clip_high)
    c.grpo.policy_loss, c.grpo.rollout_correction, c.grpo.entropy_token_fraction = "gspo", "sequence_mask", 0.2
    o = GRPOOptions.from_config(c)
    assert (o.policy_loss, o.rollout_correction, o.entropy_token_fraction) == ("gspo", "sequence_mask", 0.2)
    assert o.policy_clip == (3e-4, 4e-4)
    assert set(OBJECTIVES["grpo"].metrics(o)) >= {"mismatch_kl", "rollout_is_max", "rollout_is_min",
                                                  "rollout_is_capped_frac", "entropy_selected_frac"}
    c.grpo.policy_loss = "cispo"
    assert GRPOOptions.from_config(c).policy_clip == (1.0, 4.0)
    older = _grpo_config()  # a config written before the knobs existed
    for k in GRPOOptions.VARIANT_FIELDS:
        del older.grpo[k]
    assert GRPOOptions.from_config(older).policy_loss == "ppo_clip"


@pytest.mark.parametrize("field,value", [
    ("policy_loss", "sapo"), ("rollout_correction", "sequence_truncate"), ("rollout_correction_threshold", 0.5),
    ("entropy_token_fraction", 0.0), ("entropy_token_fraction", 1.5), ("gspo_clip_low", 0.0),
    ("gspo_clip_high", -1e-4), ("cispo_clip_low", -0.1), ("cispo_clip_high", 0.0), ("advantage_estimator", "rloo"),
    ("kv_pages", -1), ("page_size", 12), ("page_size", 128),
])
def test_bad_values_fail_at_validation_naming_the_field(field, value):
    validate(_grpo_config())  # the defaults pass
    c = _grpo_config()
    c.grpo[field] = value
    with pytest.raises(ValueError, match=rf"config\.grpo\.{field}="):
        validate(c)


def test_passk_and_overlong_knobs_checked_when_on():
    c = _grpo_config()
    c.grpo.passk_k = 99  # unused with the grpo estimator
    validate(c)
    c.grpo.advantage_estimator = "passk"
    with pytest.raises(ValueError, match=r"config\.grpo\.passk_k=99"):
        validate(c)
    c.grpo.passk_k = c.grpo.group_size
    validate(c)
    c.grpo.overlong_buffer = c.grpo.max_new_tokens + 1
    validate(c)  # the penalty is off
    c.grpo.overlong_penalty = True
    with pytest.raises(ValueError, match=r"config\.grpo\.overlong_buffer="):
        validate(c)
    c.grpo.overlong_buffer = 0
    validate(c)
    c.grpo.overlong_penalty_factor = -1.0
    with pytest.raises(ValueError, match=r"config\.grpo\.overlong_penalty_factor="):
        validate(c)
