"""GRPO advantages and clipped loss against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exploresft_jax import losses

AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def test_advantages_worked_example():
    r = jnp.array([1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(losses.grpo_advantages(r, 4), np.array([1.5, -0.5, -0.5, -0.5]) * 0.5 / (0.5 + 1e-6),
                               rtol=1e-6)
    np.testing.assert_allclose(losses.grpo_advantages(r, 4, scale="none"), [0.75, -0.25, -0.25, -0.25], rtol=1e-6)
    # not the population std (which would give 1.732)
    assert float(losses.grpo_advantages(r, 4)[0]) == pytest.approx(1.499997, abs=1e-6)


def test_advantages_batch_scale_zero_variance_and_singletons():
    r = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    adv, info = losses.grpo_advantages(jnp.asarray(r), 4, scale="batch", eps=1e-4, return_info=True)
    g = r.reshape(3, 4)
    ref = ((g - g.mean(1, keepdims=True)) / (r.std(ddof=1) + 1e-4)).reshape(-1)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(info["zero_variance"], [False] * 4 + [True] * 4 + [False] * 4)
    np.testing.assert_allclose(info["frac_zero_variance"], 1 / 3, rtol=1e-6)
    assert (np.asarray(adv)[4:8] == 0).all()
    np.testing.assert_allclose(losses.grpo_advantages(jnp.asarray(r), 1), r / (1 + 1e-6), rtol=1e-6)  # G = 1
    grp = losses.grpo_advantages(jnp.asarray(r), 4)
    ref = ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(grp, ref, rtol=1e-5)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(7)
    b, t = 4, 6
    logp = rng.uniform(-3.0, -0.1, size=(b, t)).astype(np.float32)
    old = (logp + rng.normal(scale=0.4, size=(b, t))).astype(np.float32)
    ref = (logp + rng.normal(scale=0.3, size=(b, t))).astype(np.float32)
    adv = np.array([1.2, -0.7, 0.4, -1.5], np.float32)
    m = np.ones((b, t), np.float32)
    m[0, 4:] = 0
    m[2, 2:] = 0
    m[3, 5:] = 0
    ent = rng.uniform(0.0, 2.0, size=(b, t)).astype(np.float32)
    return logp, old, ref, adv, m, ent


def np_policy(logp, old, adv, m, *, policy="ppo_clip", cl=0.2, ch=0.2, dual=None):
    """float64 per-token policy-gradient loss and its derivative w.r.t. logp, and the ratio each variant clips."""
    logp, old = logp.astype(np.float64), old.astype(np.float64)
    A = np.broadcast_to(adv.astype(np.float64)[:, None], logp.shape)
    if policy == "gspo":  # GSPO: s_i = exp(mean_t (logp - old)) over the row's tokens; d s_{i,t} / d logp_t = s_i
        L = np.maximum(m.sum(1), 1)
        r = np.broadcast_to(np.exp(np.minimum(((logp - old) * m).sum(1) / L, 10.0))[:, None], logp.shape)
    else:
        r = np.exp(np.clip(logp - old, -20, 20))
    rc = np.clip(r, 1 - cl, 1 + ch)
    if policy == "cispo":  # CISPO: -sg(clip(r)) A log pi
        return -A * rc * logp, -A * rc, r
    pg = np.maximum(-A * r, -A * rc)
    d_pg = np.where(-A * r >= -A * rc, -A * r, 0.0)  # clipped branch is constant in logp
    if dual is not None and policy == "ppo_clip":
        capped = (A < 0) & (pg > -A * dual)
        pg = np.where(capped, -A * dual, pg)
        d_pg = np.where(capped, 0.0, d_pg)
    return pg, d_pg, r


def agg_weights(m, agg, max_len):
    """d(aggregate)/d(per-token loss): the weight of each token in each aggregation mode."""
    L = m.sum(1)
    nseq = (L > 0).sum()
    if agg == "token-mean":
        return m / m.sum()
    if agg == "seq-mean-token-mean":
        return m / np.maximum(L, 1)[:, None] / nseq
    if agg == "seq-mean-token-sum":
        return m / nseq
    return m / (nseq * max_len)


def np_grpo(logp, old, ref, adv, m, *, cl, ch, dual, kl_coef, est, agg, max_len, policy="ppo_clip", pgw=None):
    """float64 loss and dL/dlogp: policy term (times pgw), plus kl_coef * KL, then aggregation."""
    pg, d_pg, r = np_policy(logp, old, adv, m, policy=policy, cl=cl, ch=ch, dual=dual)
    if pgw is not None:
        pg, d_pg = pg * pgw, d_pg * pgw
    d = logp.astype(np.float64) - ref
    kl, dkl = {"k1": (d, np.ones_like(d)), "k2": (0.5 * d * d, d), "k3": (np.exp(-d) + d - 1, 1 - np.exp(-d))}[est]
    lt, dlt = pg + kl_coef * kl, d_pg + kl_coef * dkl
    w = agg_weights(m, agg, max_len)
    return (lt * w).sum(), dlt * w, r


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("cfg", [dict(cl=0.2, ch=0.28, dual=3.0, kl_coef=0.1, est="k3"),
                                 dict(cl=0.1, ch=0.1, dual=None, kl_coef=0.05, est="k2"),
                                 dict(cl=0.2, ch=0.2, dual=1.5, kl_coef=0.3, est="k1")])
def test_grpo_loss_value_grad(batch, agg, cfg):
    logp, old, ref, adv, m, _ = batch
    f = jax.jit(jax.value_and_grad(lambda lp: losses.grpo_loss(
        lp, old, adv, m, ref_logp=ref, clip_low=cfg["cl"], clip_high=cfg["ch"], dual_clip=cfg["dual"],
        kl_coef=cfg["kl_coef"], kl_estimator=cfg["est"], aggregation=agg, max_len=8), has_aux=True))
    (loss, met), g = f(jnp.asarray(logp))
    ref_loss, ref_g, r = np_grpo(logp, old, ref, adv, m, max_len=8, agg=agg, **cfg)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-7)
    A = np.broadcast_to(adv[:, None], m.shape)
    on = m > 0
    np.testing.assert_allclose(met["clipfrac_low"], ((A < 0) & (r < 1 - cfg["cl"]))[on].mean(), atol=1e-7)
    np.testing.assert_allclose(met["clipfrac_high"], ((A > 0) & (r > 1 + cfg["ch"]))[on].mean(), atol=1e-7)
    dual = 0.0 if cfg["dual"] is None else ((A < 0) & (r > cfg["dual"]))[on].mean()
    np.testing.assert_allclose(met["clipfrac_dual"], dual, atol=1e-7)
    np.testing.assert_allclose(met["ratio_max"], r[on].max(), rtol=1e-5)
    np.testing.assert_allclose(met["ratio_min"], r[on].min(), rtol=1e-5)


def test_clip_fractions_nonzero_in_fixture(batch):
    logp, old, _, adv, m, _ = batch
    _, met = losses.grpo_loss(logp, old, adv, m, clip_low=0.2, clip_high=0.28, dual_clip=1.5)
    assert float(met["clipfrac_low"]) > 0 and float(met["clipfrac_high"]) > 0 and float(met["clipfrac_dual"]) > 0


def test_on_policy_gradient_is_reinforce():
    """ratio 1: gradient w.r.t. the logits equals -A * grad log pi (token mean)."""
    rng = np.random.default_rng(8)
    z = rng.normal(size=(3, 5, 11)).astype(np.float32)
    y = rng.integers(0, 11, size=(3, 5))
    adv = np.array([1.0, -0.5, 2.0], np.float32)
    m = np.ones((3, 5), np.float32)

    def loss(z):
        lp = losses.token_logprobs(z, y)
        return losses.grpo_loss(lp, jax.lax.stop_gradient(lp), adv, m, clip_low=0.2, clip_high=0.2)[0]

    g = jax.jit(jax.grad(loss))(z)
    zz = z.astype(np.float64) - z.max(-1, keepdims=True)
    p = np.exp(zz) / np.exp(zz).sum(-1, keepdims=True)
    grad_logpi = np.eye(11)[y] - p
    np.testing.assert_allclose(g, -adv[:, None, None] * grad_logpi / m.sum(), atol=1e-6)


@pytest.mark.parametrize("agg", AGGS)
def test_aggregation_invariant_to_micro_batching(batch, agg):
    logp, old, ref, adv, m, ent = batch
    kw = dict(ref_logp=ref, kl_coef=0.1, dual_clip=3.0, aggregation=agg, max_len=8)

    @jax.jit
    def vg(lp, old, adv, m, ref, n_tok, n_seq):
        return jax.value_and_grad(lambda lp: losses.grpo_loss(
            lp, old, adv, m, **{**kw, "ref_logp": ref}, num_tokens=n_tok, num_seqs=n_seq)[0])(lp)

    def loss_and_grad(s, num_tokens=None, num_seqs=None):
        return vg(logp[s], old[s], adv[s], m[s], ref[s], num_tokens, num_seqs)

    full, gfull = loss_and_grad(slice(None))
    n_tok, n_seq = m.sum(), (m.sum(1) > 0).sum()
    parts = [loss_and_grad(s, num_tokens=n_tok, num_seqs=n_seq) for s in (slice(0, 1), slice(1, 3), slice(3, 4))]
    np.testing.assert_allclose(sum(p[0] for p in parts), full, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), gfull, rtol=1e-6, atol=1e-8)


def test_kl_estimators_and_entropy_metric(batch):
    logp, old, ref, adv, m, ent = batch
    d = logp.astype(np.float64) - ref
    for est, val in {"k1": d, "k2": 0.5 * d * d, "k3": np.exp(-d) + d - 1}.items():
        np.testing.assert_allclose(losses.kl_penalty(logp, ref, est), val, rtol=1e-5, atol=1e-7)
        _, met = losses.grpo_loss(logp, old, adv, m, ref_logp=ref, kl_estimator=est, entropy=ent)
        np.testing.assert_allclose(met["kl"], (val * m).sum() / m.sum(), rtol=1e-5)
    np.testing.assert_allclose(met["entropy"], (ent * m).sum() / m.sum(), rtol=1e-6)
    with pytest.raises(ValueError):
        losses.grpo_loss(logp, old, adv, m, aggregation="mean")


def test_k3_is_clamped_as_verl_does():
    """k3 = exp(-d) + d - 1 with d clamped to [-20, 20] and the value to [-10, 10]; zero gradient beyond."""
    d = np.array([-30.0, -3.0, -0.5, 0.0, 0.7, 11.5, 25.0], np.float32)
    ref = np.zeros_like(d)
    got = np.asarray(losses.kl_penalty(jnp.asarray(d), jnp.asarray(ref), "k3"))
    dc = np.clip(d.astype(np.float64), -20, 20)
    np.testing.assert_allclose(got, np.clip(np.exp(-dc) + dc - 1, -10, 10), rtol=1e-6)
    assert got[0] == 10.0 and got[1] == 10.0 and got[-1] == 10.0  # exp(3) + ... = 16.1 -> 10
    grad = np.asarray(jax.grad(lambda x: losses.kl_penalty(x, jnp.asarray(ref), "k3").sum())(jnp.asarray(d)))
    np.testing.assert_allclose(grad[2:5], 1 - np.exp(-d[2:5]), rtol=1e-5)
    assert grad[0] == grad[1] == grad[5] == grad[6] == 0  # d = 11.5 gives 10.5 > 10: clamped


# --- today's defaults, unchanged ------------------------------------------------------------------------------------

# grpo_loss on the `batch` fixture, from the implementation before the policy-loss variants and pg weights existed.
GOLDEN = [
    (dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.1, kl_estimator="k3", aggregation="token-mean"),
     0.5117101073265076,
     [[-0.06526847928762436, -0.0809059664607048, -0.00151139497756958, -0.0857839435338974, 0.0, 0.0],
      [0.07626219838857651, 0.04851003736257553, 0.061018750071525574, 0.05560243874788284, -0.003174427431076765,
       0.05795568600296974],
      [-0.02420712634921074, -0.015755411237478256, 0.0, 0.0, 0.0, 0.0],
      [0.14221064746379852, 0.08317692577838898, 0.0019276775419712067, 0.16508352756500244, -0.0012598978355526924,
       0.0]]),
    (dict(clip_low=0.1, clip_high=0.1, dual_clip=None, kl_coef=0.05, kl_estimator="k2",
          aggregation="seq-mean-token-mean"),
     0.3083549737930298,
     [[-0.06984048336744308, -0.08269830793142319, -0.0007146185380406678, 0.0011243335902690887, 0.0, 0.0],
      [0.05390762537717819, 0.0348818264901638, 0.04318086430430412, 0.039891425520181656, -0.0008990767528302968,
       0.04070974886417389],
      [-0.0510355643928051, -0.034233614802360535, 0.0, 0.0, 0.0, 0.0],
      [0.12175237387418747, 0.07189130783081055, 0.0009926457423716784, 0.13985644280910492,
       -0.00048517767572775483, 0.0]]),
]


@pytest.mark.parametrize("case", range(len(GOLDEN)))
def test_defaults_reproduce_the_previous_grpo_loss(batch, case):
    logp, old, ref, adv, m, _ = batch
    kw, want_loss, want_grad = GOLDEN[case]

    def run(**extra):
        return jax.value_and_grad(lambda lp: losses.grpo_loss(lp, old, adv, m, ref_logp=ref, **kw, **extra),
                                  has_aux=True)(jnp.asarray(logp))

    (loss, _), g = run()
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(g, want_grad, rtol=1e-6, atol=1e-9)
    (loss2, met2), g2 = run(policy_loss="ppo_clip", pg_weight=None)
    np.testing.assert_array_equal(loss2, loss)
    np.testing.assert_array_equal(g2, g)
    (loss3, _), g3 = run(pg_weight=jnp.ones_like(m))  # a weight of one changes nothing
    np.testing.assert_allclose(loss3, loss, rtol=1e-7)
    np.testing.assert_allclose(g3, g, rtol=1e-7, atol=1e-12)


# --- GSPO and CISPO -------------------------------------------------------------------------------------------------

POLICIES = [("ppo_clip", dict(cl=0.2, ch=0.28, dual=3.0)),
            ("gspo", dict(cl=0.05, ch=0.08, dual=3.0)),  # dual clip ignored (verl's gspo has none)
            ("cispo", dict(cl=1.0, ch=0.15, dual=3.0)),  # MiniMax: no lower bound; a cap that binds in the fixture
            ("cispo", dict(cl=0.1, ch=4.0, dual=None))]


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("case", range(len(POLICIES)))
def test_policy_loss_variants_value_grad(batch, agg, case):
    policy, cfg = POLICIES[case]
    logp, old, ref, adv, m, _ = batch
    pgw = np.random.default_rng(3).uniform(0.0, 2.0, size=m.shape).astype(np.float32)
    f = jax.jit(jax.value_and_grad(lambda lp: losses.grpo_loss(
        lp, old, adv, m, ref_logp=ref, clip_low=cfg["cl"], clip_high=cfg["ch"], dual_clip=cfg["dual"], kl_coef=0.1,
        kl_estimator="k3", aggregation=agg, max_len=8, policy_loss=policy, pg_weight=pgw), has_aux=True))
    (loss, met), g = f(jnp.asarray(logp))
    ref_loss, ref_g, r = np_grpo(logp, old, ref, adv, m, max_len=8, agg=agg, kl_coef=0.1, est="k3", policy=policy,
                                 pgw=pgw, **cfg)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-7)
    A = np.broadcast_to(adv[:, None], m.shape)
    on = m > 0
    low, high = r < 1 - cfg["cl"], r > 1 + cfg["ch"]
    if policy != "cispo":
        low, high = low & (A < 0), high & (A > 0)
    np.testing.assert_allclose(met["clipfrac_low"], low[on].mean(), atol=1e-7)
    np.testing.assert_allclose(met["clipfrac_high"], high[on].mean(), atol=1e-7)
    np.testing.assert_allclose(met["ratio_max"], r[on].max(), rtol=1e-5)
    if policy != "ppo_clip":
        assert float(met["clipfrac_dual"]) == 0.0
    pg_ref, _, _ = np_policy(logp, old, adv, m, policy=policy, cl=cfg["cl"], ch=cfg["ch"], dual=cfg["dual"])
    np.testing.assert_allclose(met["pg_loss"], (pg_ref * pgw * agg_weights(m, agg, 8)).sum(), rtol=1e-5, atol=1e-7)


def test_variant_fixture_exercises_the_clips(batch):
    """The fixture has sequences on both sides of GSPO's band and tokens above CISPO's cap."""
    logp, old, _, adv, m, _ = batch
    _, _, r = np_policy(logp, old, adv, m, policy="gspo", cl=0.05, ch=0.08)
    s = r[:, 0]
    A = adv
    assert ((A > 0) & (s > 1.08)).any() or ((A < 0) & (s < 0.95)).any()  # some sequence clipped
    assert (((A > 0) & (s <= 1.08)) | ((A < 0) & (s >= 0.95))).any()  # some not
    _, _, r = np_policy(logp, old, adv, m, policy="cispo")
    assert (r[m > 0] > 1.15).any() and (r[m > 0] < 1.15).any()


def test_gspo_token_form_matches_the_sequence_objective():
    """With seq-mean-token-mean, GSPO-token's gradient is the gradient of the paper's sequence-level objective
    (1/G) sum_i max(-A s_i, -A clip(s_i, 1 - 3e-4, 1 + 4e-4)), s_i = exp(mean_t log(pi / pi_old)) (autodiff through
    the mean here), with the paper's clip range and ratios near it."""
    rng = np.random.default_rng(11)
    b, t = 6, 7
    logp = rng.uniform(-3.0, -0.1, size=(b, t)).astype(np.float32)
    old = (logp + rng.normal(scale=1e-3, size=(b, t))).astype(np.float32)
    adv = np.array([1.0, -1.0, 0.5, -0.5, 2.0, -2.0], np.float32)
    m = np.ones((b, t), np.float32)
    m[1, 3:] = 0
    m[4, 5:] = 0
    cl, ch = 3e-4, 4e-4

    def seq_objective(lp):
        mf = jnp.asarray(m)
        s = jnp.exp(jnp.sum((lp - old) * mf, -1) / jnp.sum(mf, -1))
        return jnp.mean(jnp.maximum(-adv * s, -adv * jnp.clip(s, 1 - cl, 1 + ch)))

    token = jax.jit(jax.value_and_grad(lambda lp: losses.grpo_loss(
        lp, old, adv, m, clip_low=cl, clip_high=ch, aggregation="seq-mean-token-mean", policy_loss="gspo")[0]))
    (v_tok, g_tok), (v_seq, g_seq) = token(jnp.asarray(logp)), jax.value_and_grad(seq_objective)(jnp.asarray(logp))
    np.testing.assert_allclose(v_tok, v_seq, atol=1e-7)  # a sum of +-A s with s ~ 1: cancellation
    np.testing.assert_allclose(g_tok, g_seq, rtol=1e-5, atol=1e-9)
    s = np.exp(((logp.astype(np.float64) - old) * m).sum(1) / m.sum(1))
    clipped = ((adv > 0) & (s > 1 + ch)) | ((adv < 0) & (s < 1 - cl))
    assert clipped.any() and (~clipped).any()  # both kinds of sequence present
    np.testing.assert_array_equal(np.abs(np.asarray(g_tok)).sum(1) == 0, clipped)  # whole sequences drop out


@pytest.mark.parametrize("policy", ["ppo_clip", "gspo", "cispo"])
def test_on_policy_variants_are_reinforce(policy):
    """old = sg(logp): every variant's gradient is -A grad log pi (CISPO's weight is 1, GSPO's s_i is 1)."""
    rng = np.random.default_rng(8)
    lp = jnp.asarray(rng.uniform(-3, -0.1, size=(3, 5)).astype(np.float32))
    adv = np.array([1.0, -0.5, 2.0], np.float32)
    m = np.ones((3, 5), np.float32)
    m[2, 3:] = 0
    g = jax.grad(lambda x: losses.grpo_loss(x, jax.lax.stop_gradient(x), adv, m, policy_loss=policy,
                                            clip_low=3e-4, clip_high=4e-4)[0])(lp)
    np.testing.assert_allclose(g, -adv[:, None] * m / m.sum(), rtol=1e-6)


# --- sampler / trainer mismatch correction --------------------------------------------------------------------------

def np_correction(old, sampler, m, mode, C):
    lr = np.clip(old.astype(np.float64) - sampler, -20, 20)
    rho = np.exp(lr)
    on = m > 0
    kl = ((rho - 1 - lr) * m).sum() / m.sum()
    if mode == "token_truncate":
        w, capped, ratios = np.minimum(rho, C), rho > C, rho[on]
    elif mode == "token_mask":
        w, capped, ratios = np.where(rho > C, 0.0, rho), rho > C, rho[on]
    elif mode == "sequence_mask":
        seq = np.exp(np.clip((lr * m).sum(1), -20, 20))
        w = np.broadcast_to(np.where(seq > C, 0.0, seq)[:, None], m.shape)
        capped = np.broadcast_to((seq > C)[:, None], m.shape)
        ratios = seq[on.any(1)]
    else:
        w, capped, ratios = np.ones_like(rho), np.zeros(m.shape, bool), rho[on]
    return w, dict(mismatch_kl=kl, ratio_max=ratios.max(), ratio_min=ratios.min(), capped_frac=capped[on].mean(),
                   weight_mean=(w * m).sum() / m.sum())


@pytest.fixture(scope="module")
def mismatch():
    rng = np.random.default_rng(5)
    b, t = 5, 6
    old = rng.uniform(-3.0, -0.1, size=(b, t)).astype(np.float32)
    sampler = (old + rng.normal(scale=0.35, size=(b, t))).astype(np.float32)
    sampler[1] = old[1] + 0.05  # a sequence with rho_i = exp(-0.05 * 6) < C in every mode
    m = np.ones((b, t), np.float32)
    m[0, 4:] = 0
    m[3, 2:] = 0
    m[4] = 0  # an empty row: no tokens, no sequence ratio
    return old, sampler, m


@pytest.mark.parametrize("mode", ["none", "token_truncate", "token_mask", "sequence_mask"])
@pytest.mark.parametrize("C", [1.2, 2.0])
def test_rollout_correction_weights(mismatch, mode, C):
    old, sampler, m = mismatch
    w, met = jax.jit(lambda o, s: losses.rollout_correction_weights(o, s, m, mode=mode, threshold=C))(old, sampler)
    w_ref, met_ref = np_correction(old, sampler, m, mode, C)
    on = m > 0
    np.testing.assert_allclose(np.asarray(w)[on], w_ref[on], rtol=1e-5)
    for k, v in met_ref.items():
        np.testing.assert_allclose(met[k], v, rtol=1e-5, atol=1e-7, err_msg=k)
    if mode != "none":
        assert 0 < float(met["capped_frac"]) < 1  # the fixture has capped and kept tokens
    grad = jax.grad(lambda o: jnp.sum(losses.rollout_correction_weights(o, sampler, m, mode=mode,
                                                                        threshold=C)[0]))(jnp.asarray(old))
    assert not np.any(np.asarray(grad))  # detached


def test_rollout_correction_validation(mismatch):
    old, sampler, m = mismatch
    with pytest.raises(ValueError, match="rollout_correction"):
        losses.rollout_correction_weights(old, sampler, m, mode="sequence_truncate")
    with pytest.raises(ValueError, match="policy_loss"):
        losses.grpo_loss(old, old, np.zeros(5, np.float32), m, policy_loss="sapo")


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("variant", [("gspo", "sequence_mask"), ("cispo", "token_truncate"),
                                     ("ppo_clip", "token_mask")])
def test_variants_invariant_to_micro_batching(batch, agg, variant):
    """GSPO's row mean and the corrections' per-token / per-row weights are local to a row: the micro-batch losses
    with the global denominators sum to the full batch's loss, gradients concatenate to its gradient."""
    policy, mode = variant
    logp, old, ref, adv, m, _ = batch
    sampler = (old + np.random.default_rng(9).normal(scale=0.3, size=old.shape)).astype(np.float32)
    clip = {"ppo_clip": (0.2, 0.28), "gspo": (0.05, 0.08), "cispo": (1.0, 0.15)}[policy]

    @jax.jit
    def vg(lp, old, sampler, adv, m, ref, n_tok, n_seq):
        w, _ = losses.rollout_correction_weights(old, sampler, m, mode=mode, threshold=1.5)
        return jax.value_and_grad(lambda lp: losses.grpo_loss(
            lp, old, adv, m, ref_logp=ref, kl_coef=0.1, dual_clip=3.0, aggregation=agg, max_len=8,
            clip_low=clip[0], clip_high=clip[1], policy_loss=policy, pg_weight=w, num_tokens=n_tok,
            num_seqs=n_seq)[0])(lp)

    n_tok, n_seq = m.sum(), (m.sum(1) > 0).sum()

    def run(s):
        return vg(logp[s], old[s], sampler[s], adv[s], m[s], ref[s], n_tok, n_seq)

    full, gfull = run(slice(None))
    parts = [run(s) for s in (slice(0, 1), slice(1, 3), slice(3, 4))]
    np.testing.assert_allclose(sum(p[0] for p in parts), full, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), gfull, rtol=1e-6, atol=1e-8)


# --- pass@k advantages ----------------------------------------------------------------------------------------------

def brute_force_passk(correct, k):
    """Average over every k-subset containing each response of the subset's (max reward - mean) / std, mean and
    std over all k-subsets of the group (float64, enumeration)."""
    import itertools

    n = len(correct)
    subsets = list(itertools.combinations(range(n), k))
    rg = np.array([float(any(correct[j] for j in s)) for s in subsets])
    mean, std = rg.mean(), rg.std()
    if std == 0:
        return np.zeros(n), mean
    adv = np.array([np.mean([(rg[g] - mean) / std for g, s in enumerate(subsets) if i in s]) for i in range(n)])
    return adv, mean


@pytest.mark.parametrize("n,k", [(4, 1), (4, 2), (4, 4), (5, 2), (5, 3), (6, 3), (8, 4)])
def test_passk_advantages_match_enumeration(n, k):
    groups = [np.array([1] * c + [0] * (n - c))[np.random.default_rng(c).permutation(n)] for c in range(n + 1)]
    rewards = np.concatenate(groups).astype(np.float32)
    adv, info = jax.jit(lambda r: losses.passk_advantages(r, n, k, return_info=True))(rewards)
    want = [brute_force_passk(g, k) for g in groups]
    np.testing.assert_allclose(adv, np.concatenate([a for a, _ in want]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(info["passk"], [mu for _, mu in want], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(adv).reshape(-1, n).sum(1), 0.0, atol=1e-5)  # centred per group
    zero = np.array([c == 0 or n - c < k for c in range(n + 1)])
    np.testing.assert_array_equal(info["zero_variance"], np.repeat(zero, n))
    np.testing.assert_allclose(info["frac_zero_variance"], zero.mean(), rtol=1e-6)


def test_passk_k1_is_grpo_with_population_std_and_reads_pm1_rewards():
    r = np.array([1.0, -1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 1.0], np.float32)  # DAPO's +-1 rewards
    got = losses.passk_advantages(jnp.asarray(r), 4, 1)
    g = (r > 0).astype(np.float64).reshape(2, 4)
    want = (g - g.mean(1, keepdims=True)) / g.std(1, keepdims=True)
    np.testing.assert_allclose(got, want.reshape(-1), rtol=1e-6)
    # the worked case n=4, c=1, k=2: R = 1 - C(3,2)/C(4,2) = 1/2, sigma = 1/2; A+ = 1; A- = (1/2 - C(2,1)/C(3,1))*2
    np.testing.assert_allclose(losses.passk_advantages(jnp.asarray([1.0, 0, 0, 0]), 4, 2), [1.0, -1 / 3, -1 / 3,
                                                                                            -1 / 3], rtol=1e-6)
    with pytest.raises(ValueError):
        losses.passk_advantages(jnp.asarray(r), 4, 5)


# --- DAPO overlong punishment ---------------------------------------------------------------------------------------

def test_overlong_penalty_matches_dapo_eq13():
    L_max, L_cache = 20, 8
    lengths = np.array([0, 5, 11, 12, 13, 16, 19, 20, 21, 40])

    def ref(n):
        if n <= L_max - L_cache:
            return 0.0
        if n <= L_max:
            return ((L_max - L_cache) - n) / L_cache
        return -1.0

    got = jax.jit(lambda x: losses.overlong_penalty(x, max_len=L_max, cache_len=L_cache))(jnp.asarray(lengths))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, [ref(n) for n in lengths], rtol=1e-6, atol=1e-7)
    assert float(got[7]) == -1.0 and float(got[3]) == 0.0  # -1 exactly at the cap, 0 up to L_max - L_cache
    np.testing.assert_allclose(losses.overlong_penalty(jnp.asarray(lengths), max_len=L_max, cache_len=L_cache,
                                                       factor=0.5), 0.5 * np.asarray(got), rtol=1e-6)
    auto = losses.overlong_penalty(jnp.asarray(lengths), max_len=L_max, cache_len=0)  # 0: a quarter, 5 tokens
    np.testing.assert_allclose(auto, losses.overlong_penalty(jnp.asarray(lengths), max_len=L_max, cache_len=5))
    with pytest.raises(ValueError):
        losses.overlong_penalty(jnp.asarray(lengths), max_len=L_max, cache_len=21)
