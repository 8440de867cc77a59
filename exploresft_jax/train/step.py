"""The pure, sharded SFT / OXA / CurioSFT train step.

`make_train_step` returns a jitted `step(state, batch) -> (state, metrics)` over a `TrainState` pytree:
  * the model is split once (graphdef outside, parameters in the state) and merged inside the trace;
  * gradient accumulation is a `lax.scan` over the batch's leading micro-batch axis; every loss is normalised
    by denominators taken from the *whole* batch (token count, CE / UL example counts), so the sum over
    micro-batches equals the loss of the full batch, whatever the number of micro-batches;
  * the head runs through `losses.chunked_token_stats`, never building [B, T, V] logits;
  * a non-finite gradient norm skips the update (parameters and optimiser state unchanged) and is reported; the
    logged `lr` is the one the optimizer uses for this step's update (its schedule counts applied updates only);
  * CurioSFT's lagged teacher is mixed phi <- (1 - alpha) phi + alpha theta at the start of every
    `sync_every`-th step (steps sync_every, 2 sync_every, ... counted from 1), before its forward pass;
  * micro-batches without a single counted token (the all-padding tail of a packed step's bucket) are skipped
    with `lax.cond`: they cost no forward or backward pass and contribute exactly nothing;
  * statistics that couple examples across the whole step (OXA's perplexity weights, normalised over the step's
    CE examples; entropy-regularisation's top-rho token selection) come from a first, gradient-free pass over
    the micro-batches (`step_statistics`), run only when such an option is on, so that the result does not
    depend on the number of micro-batches.

Batch (per step, all int32 unless noted), as `exploresft_jax.data.pipeline` builds it: tokens, labels,
loss_mask, positions, segment_ids, is_negative [micro, rows, T]; weight, sample_norm [micro, rows, T] float32.
Rows may hold several packed examples (segments); `sample_norm` is 1 / (counted tokens of the token's example)
on counted tokens, so per-example means (OXA's CE / UL groups) and example counts are token sums. The row
form, is_negative / weight [micro, rows] and no sample_norm (one example per row; GRPO's batches), is accepted
too and means the same as the token form with one segment per row.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from exploresft_jax import losses
from exploresft_jax.losses.curio import DIVERGENCES as CURIO_DIVERGENCES
from exploresft_jax.losses.reduce import safe_divide
from exploresft_jax.train.optim import schedule_count

METHODS = ("sft", "oxa", "curio", "entropy_reg", "dft")
RL_METHODS = ("grpo",)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """step: [] int32 optimizer steps taken; params: nnx.State of nnx.Param; opt_state: optax state;
    teacher: CurioSFT's lagged copy of params (None otherwise)."""

    step: jax.Array
    params: Any
    opt_state: Any
    teacher: Any = None


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the step (hashable)."""

    method: str = "sft"
    # sft: "token" = mean over all counted tokens of the step | "sample" = each example's token mean, averaged
    # over the step's examples (OXA's CE term; oxa with no UL data then equals sft with "sample")
    sft_normalization: str = "token"
    chunk_size: int = 1024
    vocab_chunk_size: int = 8192
    ul_weight: float = 1e-4
    ul_eps: float = 1e-6
    oxa_sample_weighting: str = "none"  # none | data (the records' "weight" field) | perplexity
    oxa_weight_alpha: float = 1.0
    curio_coef: float = 1.0
    curio_divergence: str = "k2"  # k2 (released, at the label) | forward_kl | reverse_kl (full vocabulary)
    curio_teacher: str = "lagged"  # lagged | live
    curio_sync_every: int = 5
    curio_alpha: float = 0.99
    curio_fixed_tau: float = 0.0
    curio_tau: tuple = (("tau_min", 1.1), ("tau_max", 1.5), ("pivot", 1.2), ("slope", 2.0), ("max_increase", 0.5),
                        ("top_k", 512), ("iters", 20), ("floor", 0.03))
    entropy_coef: float = 0.0
    entropy_top_fraction: float = 1.0
    # GRPO (batch adds advantages [rows], old_logp / sampler_logp / ref_logp [rows, T])
    rollout_temperature: float = 1.0  # log-probs are of softmax(z / T), the distribution that was sampled
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 0.0  # > 1 enables the dual clip
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    aggregation: str = "token-mean"
    max_len: int = 0  # Dr. GRPO's constant (seq-mean-token-sum-norm)
    on_policy: bool = True  # one update per batch: old_logp = stop_gradient(logp), ratio exactly 1

    @classmethod
    def from_config(cls, cfg) -> "StepConfig":
        c = cfg.loss.curio
        return cls(method=cfg.method, sft_normalization=cfg.loss.get("sft_normalization", "token"),
                   chunk_size=cfg.loss.chunk_size, vocab_chunk_size=cfg.loss.vocab_chunk_size,
                   ul_weight=cfg.loss.oxa.ul_weight, ul_eps=cfg.loss.oxa.eps,
                   oxa_sample_weighting=cfg.loss.oxa.sample_weighting, oxa_weight_alpha=cfg.loss.oxa.weight_alpha,
                   curio_coef=c.coef, curio_divergence=c.get("divergence", "k2"), curio_teacher=c.teacher,
                   curio_sync_every=c.sync_every, curio_alpha=c.alpha,
                   curio_fixed_tau=c.fixed_tau,
                   curio_tau=tuple((k, c[k]) for k in ("tau_min", "tau_max", "pivot", "slope", "max_increase",
                                                        "top_k", "iters", "floor")),
                   entropy_coef=cfg.loss.entropy_reg.coef, entropy_top_fraction=cfg.loss.entropy_reg.top_fraction)

    def __post_init__(self):  # checked once when the step is configured, not inside the traced loss
        if self.sft_normalization not in ("token", "sample"):
            raise ValueError(f"sft_normalization={self.sft_normalization!r}; expected 'token' or 'sample'")
        if self.curio_divergence not in CURIO_DIVERGENCES:
            raise ValueError(f"curio_divergence={self.curio_divergence!r}; expected one of {CURIO_DIVERGENCES}")

    @property
    def lagged_teacher(self) -> bool:
        return self.method == "curio" and self.curio_teacher == "lagged"


def token_view(batch) -> dict[str, jax.Array]:
    """The per-token arrays of a batch (or micro-batch), whichever form it came in: mask (float32), neg (bool),
    weight and sample_norm (float32), all shaped like loss_mask. Row-form fields [..., rows] are broadcast over
    tokens, and a missing sample_norm means one example per row."""
    m = batch["loss_mask"].astype(jnp.float32)

    def per_token(x):
        x = jnp.asarray(x)
        return jnp.broadcast_to(x[..., None] if x.ndim == m.ndim - 1 else x, m.shape)

    sn = batch["sample_norm"] if "sample_norm" in batch else losses.row_sample_norm(m)
    return {"mask": m, "neg": per_token(batch["is_negative"]).astype(bool),
            "weight": per_token(batch["weight"]).astype(jnp.float32), "sample_norm": sn.astype(jnp.float32)}


def batch_denominators(batch) -> dict[str, jax.Array]:
    """Global normalisers from the whole step's batch: response tokens, examples (sequences) and CE / UL
    example counts. Example counts are sums of mask * sample_norm (1 per example), rounded to integers."""
    v = token_view(batch)
    m, neg = v["mask"], v["neg"]
    share = m * v["sample_norm"]
    return {"tokens": jnp.sum(m), "seqs": jnp.round(jnp.sum(share)),
            "positive": jnp.round(jnp.sum(jnp.where(neg, 0.0, share))),
            "negative": jnp.round(jnp.sum(jnp.where(neg, share, 0.0))),
            "ce_tokens": jnp.sum(jnp.where(neg, 0.0, m)), "ul_tokens": jnp.sum(jnp.where(neg, m, 0.0))}


def _forward(graphdef, params, mb):
    model = nnx.merge(graphdef, params)
    seg = mb["segment_ids"]
    hidden = model(mb["tokens"], mb["positions"], segment_ids=seg, attn_mask=seg > 0)
    return hidden, model.head_weight()


def needs_step_statistics(sc: StepConfig) -> bool:
    """True when the loss needs `step_statistics` (a coupling across the whole step's batch)."""
    return ((sc.method == "oxa" and sc.oxa_sample_weighting == "perplexity")
            or (sc.method == "entropy_reg" and sc.entropy_top_fraction < 1.0))


def step_statistics(params, batch, *, graphdef, sc: StepConfig) -> dict[str, jax.Array]:
    """Gradient-free pass over the micro-batches of a [micro, rows, T] batch for the step-wide quantities.

    One forward + chunked head per micro-batch (`lax.map`, all-padding micro-batches skipped), then over the
    whole batch at once:
      * "ppl_weight" (oxa, sample_weighting="perplexity"): [micro, rows, T] float32, the weight of each token's
        example, normalised to average 1 over all CE examples of the step (0 on UL / uncounted tokens);
      * "entropy_select" (entropy_reg, top_fraction < 1): [micro, rows, T] float32 0/1, the ceil(rho * n) highest-
        entropy tokens among the step's n counted tokens (ties at the threshold kept).
    Returns {} when neither option is on.
    """
    if not needs_step_statistics(sc):
        return {}
    params = jax.lax.stop_gradient(params)

    def one(mb):
        def run(mb):
            hidden, w = _forward(graphdef, params, mb)
            st = losses.chunked_token_stats(hidden, w, mb["labels"], chunk_size=sc.chunk_size,
                                            vocab_chunk_size=sc.vocab_chunk_size)
            return st["logprob"], st["entropy"]

        zeros = jnp.zeros(mb["labels"].shape, jnp.float32)
        return jax.lax.cond(jnp.any(mb["loss_mask"] > 0), run, lambda _: (zeros, zeros), mb)

    lp, ent = jax.lax.map(one, batch)
    v = token_view(batch)
    shape = lp.shape
    rows = lambda x: x.reshape(-1, shape[-1])  # noqa: E731  [micro * rows, T]: one flat batch of rows
    out = {}
    if sc.method == "oxa":
        w = losses.perplexity_token_weights(rows(lp), rows(v["mask"]), rows(v["sample_norm"]),
                                            rows(batch["segment_ids"]), alpha=sc.oxa_weight_alpha,
                                            valid=~rows(v["neg"]))
        out["ppl_weight"] = w.reshape(shape)
    else:
        out["entropy_select"] = losses.top_fraction_mask(rows(ent), rows(v["mask"]),
                                                         sc.entropy_top_fraction).reshape(shape)
    return out


def micro_loss(params, teacher, mb, den, *, graphdef, sc: StepConfig):
    """Loss of one micro-batch, normalised by the global denominators `den`, and its metric sums.

    Returns (loss, sums) where each entry of `sums` adds up over micro-batches to a global-batch quantity.
    """
    hidden, w = _forward(graphdef, params, mb)
    if sc.method == "grpo":
        return _grpo_micro_loss(hidden, w, mb, den, sc)
    teacher_kw = {}
    if sc.method == "curio":
        if sc.curio_teacher == "live":  # the detached student itself: no second forward pass
            t_hidden, t_w = jax.lax.stop_gradient(hidden), jax.lax.stop_gradient(w)
        else:
            t_hidden, t_w = _forward(graphdef, jax.lax.stop_gradient(teacher), mb)
        tt = losses.chunked_curio_teacher(t_hidden, t_w, mb["labels"], chunk_size=sc.chunk_size,
                                          temperature=sc.curio_fixed_tau if sc.curio_fixed_tau > 0 else None,
                                          **dict(sc.curio_tau))
        if sc.curio_divergence != "k2":  # the KL to softmax(teacher / tau) streams through the student's head pass
            teacher_kw = dict(teacher_hidden=t_hidden, teacher_head_weight=t_w, teacher_temperature=tt["tau"])
    stats = losses.chunked_token_stats(hidden, w, mb["labels"], chunk_size=sc.chunk_size,
                                       vocab_chunk_size=sc.vocab_chunk_size, **teacher_kw)
    lp, ent = stats["logprob"], stats["entropy"]
    v = token_view(mb)
    m, neg = v["mask"], v["neg"]
    ce_m = jnp.where(neg, 0.0, m)
    ent_d = jax.lax.stop_gradient(ent)
    sums = {"nll_sum": jnp.sum(-lp * ce_m), "entropy_sum": jnp.sum(ent_d * ce_m)}

    if sc.method == "sft" and sc.sft_normalization == "sample":
        loss = safe_divide(jnp.sum(-lp * m * v["sample_norm"]), den["seqs"])
    elif sc.method == "sft":
        loss = safe_divide(jnp.sum(-lp * m), den["tokens"])
    elif sc.method == "dft":
        loss, _ = losses.dft_loss_from_logprobs(lp, m, denominator=den["tokens"])
    elif sc.method == "entropy_reg":
        if "entropy_select" in mb:  # chosen over the whole step (step_statistics)
            sel, n_sel = mb["entropy_select"], den["selected"]
        else:  # a lone micro-batch (or rho = 1): the selection is this batch's
            sel = losses.top_fraction_mask(ent_d, m, sc.entropy_top_fraction)
            n_sel = den["tokens"] * sc.entropy_top_fraction
        bonus = safe_divide(jnp.sum(ent * sel), n_sel)
        loss = safe_divide(jnp.sum(-lp * m), den["tokens"]) - sc.entropy_coef * bonus
        sums["entropy_bonus_sum"] = jax.lax.stop_gradient(bonus)
    elif sc.method == "oxa":
        weight = None
        if sc.oxa_sample_weighting == "data":
            weight = v["weight"]
        elif sc.oxa_sample_weighting == "perplexity":
            if "ppl_weight" in mb:  # normalised over the whole step's CE examples (step_statistics)
                weight = mb["ppl_weight"]
            else:  # a lone micro-batch: normalised over its own CE examples
                weight = losses.perplexity_token_weights(jax.lax.stop_gradient(lp), m, v["sample_norm"],
                                                         mb["segment_ids"], alpha=sc.oxa_weight_alpha, valid=~neg)
        loss, met = losses.oxa_loss_from_token_weights(lp, m, neg, v["sample_norm"], ul_weight=sc.ul_weight,
                                                       eps=sc.ul_eps, sample_weight=weight,
                                                       num_positive=den["positive"], num_negative=den["negative"])
        sums.update(ce_sum=met["ce_sum"], ul_sum=met["ul_sum"],
                    ul_entropy_sum=jnp.sum(ent_d * jnp.where(neg, m, 0.0)))
    elif sc.method == "curio":
        if sc.curio_divergence == "k2":
            loss, met = losses.curio_sft_loss_from_logprobs(lp, tt["tempered_logprob"], m, coef=sc.curio_coef,
                                                            denominator=den["tokens"])
        else:
            loss, met = losses.curio_sft_loss_from_divergence(lp, stats[sc.curio_divergence], m,
                                                              coef=sc.curio_coef, denominator=den["tokens"])
        sums.update(sed_sum=met["sed_sum"], tau_sum=jnp.sum(tt["tau"] * m),
                    teacher_entropy_sum=jnp.sum(tt["entropy"] * m))
    else:
        raise ValueError(f"unknown method {sc.method!r}; expected one of {METHODS}")
    return loss, sums


def _grpo_micro_loss(hidden, w, mb, den, sc: StepConfig):
    """Clipped policy-gradient loss on rollout tokens; metric sums for clip fractions, KL, entropy and the
    trainer-vs-sampler log-prob gap."""
    stats = losses.chunked_token_stats(hidden, w, mb["labels"], chunk_size=sc.chunk_size,
                                       vocab_chunk_size=sc.vocab_chunk_size, temperature=sc.rollout_temperature)
    logp = stats["tempered_logprob"]
    m = mb["loss_mask"].astype(jnp.float32)
    old = jax.lax.stop_gradient(logp) if sc.on_policy else mb["old_logp"]
    loss, met = losses.grpo_loss(
        logp, old, mb["advantages"], m, ref_logp=mb["ref_logp"] if sc.kl_coef else None, clip_low=sc.clip_low,
        clip_high=sc.clip_high, dual_clip=sc.dual_clip if sc.dual_clip > 1 else None, kl_coef=sc.kl_coef,
        kl_estimator=sc.kl_estimator, aggregation=sc.aggregation, max_len=sc.max_len or None,
        num_tokens=den["tokens"], num_seqs=den["seqs"])
    count = jnp.sum(m)
    lp_d = jax.lax.stop_gradient(logp)
    sums = {k + "_sum": met[k] * count for k in ("clipfrac_low", "clipfrac_high", "clipfrac_dual", "ratio_mean")}
    # entropy at the rollout temperature (the distribution sampled, as verl's actor/entropy) and at T = 1
    sums.update(entropy_sum=jnp.sum(stats["tempered_entropy"] * m),
                entropy_untempered_sum=jnp.sum(jax.lax.stop_gradient(stats["entropy"]) * m),
                logprob_gap_sum=jnp.sum(jnp.abs(lp_d - mb["sampler_logp"]) * m),
                nll_sum=jnp.sum(-lp_d * m), ratio_max=met["ratio_max"], ratio_min=met["ratio_min"])
    if sc.kl_coef:
        sums["kl_sum"] = met["kl"] * count
    return loss, sums


def _finalise_metrics(sums, den, sc: StepConfig) -> dict[str, jax.Array]:
    if sc.method == "grpo":
        out = {k[:-4]: safe_divide(v, den["tokens"]) for k, v in sums.items() if k.endswith("_sum")}
        out.update(tokens=den["tokens"], ratio_max=sums["ratio_max"], ratio_min=sums["ratio_min"])
        return out
    out = {"nll": safe_divide(sums["nll_sum"], den["ce_tokens"]),
           "entropy": safe_divide(sums["entropy_sum"], den["ce_tokens"]), "tokens": den["tokens"]}
    if sc.method == "oxa":
        out.update(ce=safe_divide(sums["ce_sum"], den["positive"]), ul=safe_divide(sums["ul_sum"], den["negative"]),
                   ul_entropy=safe_divide(sums["ul_entropy_sum"], den["ul_tokens"]),
                   ce_entropy=out["entropy"])
    if sc.method == "curio":
        out.update(sed=safe_divide(sums["sed_sum"], den["tokens"]), tau=safe_divide(sums["tau_sum"], den["tokens"]),
                   teacher_entropy=safe_divide(sums["teacher_entropy_sum"], den["tokens"]))
    if sc.method == "entropy_reg":
        out["entropy_bonus"] = sums["entropy_bonus_sum"]
    return out


def train_step(state: TrainState, batch, *, graphdef, tx, schedule, sc: StepConfig):
    """One optimizer step over a [micro, rows, T] batch (see the module docstring); the micro axis may differ
    between calls (each size compiles once)."""
    teacher = state.teacher
    if sc.lagged_teacher:
        sync = (state.step + 1) % sc.curio_sync_every == 0
        teacher = jax.tree.map(
            lambda t, p: jnp.where(sync, (1 - sc.curio_alpha) * t + sc.curio_alpha * p, t), teacher, state.params)
    den = batch_denominators(batch)
    extra = step_statistics(state.params, batch, graphdef=graphdef, sc=sc)
    if "entropy_select" in extra:
        den["selected"] = jnp.sum(extra["entropy_select"])
    batch = {**batch, **extra}
    grad_fn = jax.value_and_grad(functools.partial(micro_loss, graphdef=graphdef, sc=sc), has_aux=True)

    def add_micro(carry, mb):
        g_acc, loss_acc, sums_acc = carry
        (loss, sums), g = grad_fn(state.params, teacher, mb, den)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        sums_acc = {k: (jnp.maximum if k == "ratio_max" else jnp.minimum if k == "ratio_min" else jnp.add)(
            sums_acc[k], v) for k, v in sums.items()}
        return g_acc, loss_acc + loss, sums_acc

    def accumulate(carry, mb):
        if sc.method in RL_METHODS:  # GRPO micro-batches always hold rollout tokens
            return add_micro(carry, mb), None
        # A packed step's bucket ends in all-padding micro-batches: skip their forward and backward passes.
        busy = jnp.any(mb["loss_mask"] > 0)
        return jax.lax.cond(busy, lambda c: add_micro(c, mb), lambda c: c, carry), None

    zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    first = jax.tree.map(lambda x: x[0], batch)
    sums_shape = jax.eval_shape(lambda: micro_loss(state.params, teacher, first, den, graphdef=graphdef, sc=sc)[1])
    zeros_sums = {k: jnp.full(v.shape, -jnp.inf if k == "ratio_max" else jnp.inf if k == "ratio_min" else 0, v.dtype)
                  for k, v in sums_shape.items()}
    (grads, loss, sums), _ = jax.lax.scan(accumulate, (zeros_g, jnp.zeros((), jnp.float32), zeros_sums), batch)

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                           opt_state=keep(new_opt, state.opt_state), teacher=teacher)
    lr = schedule(schedule_count(state.opt_state, state.step))  # the lr of this step's update, if applied
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "skipped": (~finite).astype(jnp.int32),
               **_finalise_metrics(sums, den, sc)}
    return new_state, metrics


def train_state_shardings(params, tx, sc: StepConfig) -> TrainState | None:
    """Shardings of the TrainState built from `params` (arrays or ShapeDtypeStructs placed with NamedShardings).

    An optimizer-state leaf whose tree path ends with a parameter's path and has its shape (Adam's mu / nu) is
    placed like that parameter; the rest (step, counts) is replicated; the teacher like the parameters. Without
    this, the compiler replicates the zero-initialised moments on every device (no data dependence on the
    parameters to propagate from). None when the parameters are not on a mesh.
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    if not flat or not all(isinstance(getattr(x, "sharding", None), NamedSharding) for _, x in flat):
        return None
    replicated = NamedSharding(flat[0][1].sharding.mesh, PartitionSpec())
    by_path = {tuple(path): (tuple(x.shape), x.sharding) for path, x in flat}

    def place(path, leaf):
        for k in range(len(path)):
            hit = by_path.get(tuple(path[k:]))
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return replicated

    param_sh = jax.tree.map(lambda x: x.sharding, params)
    opt_sh = jax.tree_util.tree_map_with_path(place, jax.eval_shape(tx.init, params))
    return TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                      teacher=param_sh if sc.lagged_teacher else None)


def init_train_state(model, tx, sc: StepConfig, mesh=None, param_shardings=None) -> tuple[Any, TrainState]:
    """(graphdef, TrainState) from a model; optimiser state (and teacher) placed like the parameters."""
    graphdef, params = nnx.split(model)
    teacher = jax.tree.map(jnp.copy, params) if sc.lagged_teacher else None

    def make(params, teacher):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), teacher=teacher)

    shardings = train_state_shardings(params, tx, sc)
    make = jax.jit(make) if shardings is None else jax.jit(make, out_shardings=shardings)
    return graphdef, make(params, teacher)


def make_train_step(graphdef, tx, schedule, sc: StepConfig, state_shardings, batch_shardings, metric_sharding):
    """The jitted step with explicit in/out shardings; the incoming state is donated."""
    fn = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, sc=sc)
    return jax.jit(fn, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, metric_sharding), donate_argnums=0)
