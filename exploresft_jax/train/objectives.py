"""What each training method optimises: its options, its loss over the shared per-token statistics, its metrics.

One table, `OBJECTIVES`, maps a method name to an `Objective`:
  * `options`: the frozen dataclass of the method's own settings (its config section: `loss.oxa`, `loss.curio`,
    `loss.entropy_reg`, `grpo`, ...), hashable so that the whole `StepConfig` is a static jit argument;
  * `loss(p, opts) -> (loss, sums)`: the loss of one micro-batch, normalised by the *whole step's* denominators
    (`p.den`), and the per-micro-batch contributions to each metric;
  * `metrics(opts) -> {name: Metric}`: how each of those contributions accumulates over micro-batches (sum, max
    or min) and which whole-step denominator turns it into the logged value. The accumulator's initial value
    follows from this declaration, so the step never traces a loss only to learn its metrics' shapes.

The train step (`train/step.py`) owns everything shared: the forward pass, gradient accumulation, the
denominators, the optimiser update. A new method is one options class, one loss function and one table row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from exploresft_jax import losses
from exploresft_jax.configs.schema import (
    ConfigError,
    CurioOptions,
    EntropyRegOptions,
    GRPOSection,
    OXAOptions,
    SFTOptions,
)

_G = GRPOSection  # GRPOOptions' defaults are the grpo section's


# --- options: one frozen dataclass per method --------------------------------------------------------------------
# SFTOptions, OXAOptions, CurioOptions and EntropyRegOptions are the config sections themselves (configs/schema.py:
# each field's type, allowed values, default and doc declared once); GRPOOptions is derived from the `grpo` section.


@dataclasses.dataclass(frozen=True)
class DFTOptions:
    """Dynamic fine-tuning has no options."""


@dataclasses.dataclass(frozen=True)
class GRPOOptions:
    """The policy-gradient step's settings from `grpo`. The batch adds advantages [rows] and old_logp /
    sampler_logp / ref_logp [rows, T]; log-probs are of softmax(z / rollout_temperature), the sampled
    distribution. `on_policy` (one update per rollout batch): old_logp = stop_gradient(logp), ratio exactly 1.

    `policy_loss`: ppo_clip (clip_low / clip_high, dual_clip) | gspo (GSPO, Zheng et al. 2025: the sequence-level
    ratio, its own tiny clip range gspo_clip_low / gspo_clip_high) | cispo (CISPO, MiniMax-M1 2025: a clipped,
    detached IS weight on log pi, bounds 1 - cispo_clip_low, 1 + cispo_clip_high); see `losses.grpo_loss`.
    `rollout_correction` (none | token_truncate | token_mask | sequence_mask, threshold
    `rollout_correction_threshold`): truncated / masked importance weights exp(old_logp - sampler_logp) on the
    policy-gradient term, as TRL / verl (`losses.rollout_correction_weights`). `entropy_token_fraction` < 1: the
    policy-gradient term only on that fraction of each micro-batch's response tokens with the highest
    rollout-temperature entropy (Wang et al. 2025, "Beyond the 80/20 Rule"); the denominators still count every
    response token, as the paper's objective does."""

    rollout_temperature: float = 1.0
    clip_low: float = _G.clip_low
    clip_high: float = _G.clip_high
    dual_clip: float = 0.0  # > 1 enables the dual clip
    kl_coef: float = 0.0
    kl_estimator: str = _G.kl_estimator
    aggregation: str = _G.aggregation
    max_len: int = 0  # Dr. GRPO's constant (seq-mean-token-sum-norm)
    on_policy: bool = True
    policy_loss: str = _G.policy_loss
    gspo_clip_low: float = _G.gspo_clip_low
    gspo_clip_high: float = _G.gspo_clip_high
    cispo_clip_low: float = _G.cispo_clip_low
    cispo_clip_high: float = _G.cispo_clip_high
    rollout_correction: str = _G.rollout_correction
    rollout_correction_threshold: float = _G.rollout_correction_threshold
    entropy_token_fraction: float = _G.entropy_token_fraction

    def __post_init__(self):  # checked once when the step is configured, not inside the traced loss
        # the same field checks as the config's grpo section (choices from the registries, bounds)
        fields = {f: getattr(self, f) for f in self.VARIANT_FIELDS}
        try:
            GRPOSection(**fields)
        except ConfigError as e:
            raise ValueError(f"grpo.{e}") from None

    @property
    def policy_clip(self) -> tuple[float, float]:
        """(clip_low, clip_high) of the chosen policy loss (the fields its registry entry names)."""
        low, high = losses.grpo.POLICY_LOSSES[self.policy_loss].clip_fields
        return getattr(self, low), getattr(self, high)

    @classmethod
    def from_config(cls, cfg) -> GRPOOptions:
        """From a run config's `grpo` section (fields a config lacks take the schema's defaults)."""
        g = GRPOSection.from_config(cfg.grpo)
        return cls(rollout_temperature=g.temperature, clip_low=g.clip_low, clip_high=g.clip_high,
                   dual_clip=g.dual_clip, kl_coef=g.kl_coef, kl_estimator=g.kl_estimator, aggregation=g.aggregation,
                   max_len=g.max_new_tokens, on_policy=g.mini_batches * g.ppo_epochs == 1,
                   **{k: getattr(g, k) for k in cls.VARIANT_FIELDS})

    VARIANT_FIELDS = ("policy_loss", "gspo_clip_low", "gspo_clip_high", "cispo_clip_low", "cispo_clip_high",
                      "rollout_correction", "rollout_correction_threshold", "entropy_token_fraction")


# --- metrics -----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Metric:
    """A logged metric: the loss function's per-micro-batch values are combined with `reduce` (sum | max | min)
    over the step's micro-batches, then divided by the whole step's denominator `per` (a key of the step's
    denominators: tokens, ce_tokens, ul_tokens, positive, negative, seqs), or logged as combined when None."""

    per: str | None = "tokens"
    reduce: str = "sum"

    @property
    def identity(self) -> float:
        return {"sum": 0.0, "max": -jnp.inf, "min": jnp.inf}[self.reduce]

    def combine(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return {"sum": jnp.add, "max": jnp.maximum, "min": jnp.minimum}[self.reduce](a, b)


# --- the micro-batch a loss sees -----------------------------------------------------------------------------------

class MicroBatch(NamedTuple):
    """What an objective's loss reads for one micro-batch.

    hidden: [rows, T, D] final hidden states (compute dtype); head_weight: [V, D]; batch: the micro-batch arrays
    (labels, segment_ids, advantages, ...); tokens: the per-token view (mask, neg, weight, sample_norm: [rows, T]
    float32 / bool, see step.token_view); den: the whole step's denominators (float32 scalars); teacher_forward:
    () -> (hidden, head_weight) of CurioSFT's teacher, detached; chunk_size / vocab_chunk_size: the head's tiles.
    """

    hidden: jax.Array
    head_weight: jax.Array
    batch: Mapping[str, jax.Array]
    tokens: Mapping[str, jax.Array]
    den: Mapping[str, jax.Array]
    teacher_forward: Callable[[], tuple[jax.Array, jax.Array]]
    chunk_size: int
    vocab_chunk_size: int

    def stats(self, **kw) -> dict[str, jax.Array]:
        """`losses.chunked_token_stats` of this micro-batch's labels with the step's tile sizes."""
        return losses.chunked_token_stats(self.hidden, self.head_weight, self.batch["labels"],
                                          chunk_size=self.chunk_size, vocab_chunk_size=self.vocab_chunk_size, **kw)


def _sft_family_sums(p: MicroBatch, st) -> tuple[dict, jax.Array, jax.Array]:
    """(sums of the metrics every SFT-family method logs, the counted-token mask, the detached entropy)."""
    m, neg = p.tokens["mask"], p.tokens["neg"]
    ce_m = jnp.where(neg, 0.0, m)
    ent_d = jax.lax.stop_gradient(st["entropy"])
    return {"nll": jnp.sum(-st["logprob"] * ce_m), "entropy": jnp.sum(ent_d * ce_m)}, m, ent_d


SFT_FAMILY_METRICS = {"nll": Metric("ce_tokens"), "entropy": Metric("ce_tokens")}


# --- the methods ---------------------------------------------------------------------------------------------------

def sft_loss(p: MicroBatch, o: SFTOptions):
    st = p.stats()
    sums, m, _ = _sft_family_sums(p, st)
    if o.normalization == "sample":  # each example's token mean (sample_norm = 1 / its tokens), over the examples
        loss, _ = losses.sft_loss_from_logprobs(st["logprob"], m * p.tokens["sample_norm"], denominator=p.den["seqs"])
    else:
        loss, _ = losses.sft_loss_from_logprobs(st["logprob"], m, denominator=p.den["tokens"])
    return loss, sums


def dft_loss(p: MicroBatch, o: DFTOptions):
    st = p.stats()
    sums, m, _ = _sft_family_sums(p, st)
    loss, _ = losses.dft_loss_from_logprobs(st["logprob"], m, denominator=p.den["tokens"])
    return loss, sums


def entropy_reg_loss(p: MicroBatch, o: EntropyRegOptions):
    st = p.stats()
    sums, m, ent_d = _sft_family_sums(p, st)
    if "entropy_select" in p.batch:  # chosen over the whole step (step_statistics)
        sel, n_sel = p.batch["entropy_select"], p.den["selected"]
    else:  # a lone micro-batch (or rho = 1): the selection is this batch's, its size rho x the step's tokens
        sel = losses.top_fraction_mask(ent_d, m, o.top_fraction)
        n_sel = p.den["tokens"] * o.top_fraction
    loss, met = losses.entropy_regularized_sft_loss_from_stats(
        st["logprob"], st["entropy"], m, coef=o.coef, denominator=p.den["tokens"], selected=sel,
        selected_denominator=n_sel)
    sums["entropy_bonus"] = met["entropy_selected"]  # already a share of the step's mean
    return loss, sums


def oxa_loss(p: MicroBatch, o: OXAOptions):
    st = p.stats()
    sums, m, ent_d = _sft_family_sums(p, st)
    lp, neg, sn = st["logprob"], p.tokens["neg"], p.tokens["sample_norm"]
    weight = None
    if o.sample_weighting == "data":
        weight = p.tokens["weight"]
    elif o.sample_weighting == "perplexity":
        if "ppl_weight" in p.batch:  # normalised over the whole step's CE examples (step_statistics)
            weight = p.batch["ppl_weight"]
        else:  # a lone micro-batch: normalised over its own CE examples
            weight = losses.perplexity_token_weights(jax.lax.stop_gradient(lp), m, sn, p.batch["segment_ids"],
                                                     alpha=o.weight_alpha, valid=~neg)
    loss, met = losses.oxa_loss_from_token_weights(lp, m, neg, sn, ul_weight=o.ul_weight, eps=o.eps,
                                                   sample_weight=weight, num_positive=p.den["positive"],
                                                   num_negative=p.den["negative"])
    sums.update(ce=met["ce_sum"], ul=met["ul_sum"], ul_entropy=jnp.sum(ent_d * jnp.where(neg, m, 0.0)),
                ce_entropy=sums["entropy"])
    return loss, sums


def curio_loss(p: MicroBatch, o: CurioOptions):
    if o.teacher == "live":  # the detached student itself: no second forward pass
        t_hidden, t_w = jax.lax.stop_gradient(p.hidden), jax.lax.stop_gradient(p.head_weight)
    else:
        t_hidden, t_w = p.teacher_forward()
    tt = losses.chunked_curio_teacher(t_hidden, t_w, p.batch["labels"], chunk_size=p.chunk_size,
                                      temperature=o.fixed_tau if o.fixed_tau > 0 else None, **o.tau_kwargs)
    teacher_kw = {}
    if o.divergence != "k2":  # the KL to softmax(teacher / tau) streams through the student's head pass
        teacher_kw = dict(teacher_hidden=t_hidden, teacher_head_weight=t_w, teacher_temperature=tt["tau"])
    st = p.stats(**teacher_kw)
    sums, m, _ = _sft_family_sums(p, st)
    if o.divergence == "k2":
        loss, met = losses.curio_sft_loss_from_logprobs(st["logprob"], tt["tempered_logprob"], m, coef=o.coef,
                                                        denominator=p.den["tokens"])
    else:
        loss, met = losses.curio_sft_loss_from_divergence(st["logprob"], st[o.divergence], m, coef=o.coef,
                                                          denominator=p.den["tokens"])
    sums.update(sed=met["sed_sum"], tau=jnp.sum(tt["tau"] * m), teacher_entropy=jnp.sum(tt["entropy"] * m))
    return loss, sums


def grpo_loss(p: MicroBatch, o: GRPOOptions):
    """Policy-gradient loss on rollout tokens (`o.policy_loss`), with the sampler-mismatch correction and the
    high-entropy-token selection as weights on its policy-gradient term; clip fractions, KL, entropy, the
    trainer-vs-sampler log-prob gap and the correction's statistics as metrics.

    The entropy selection is per micro-batch (`losses.top_fraction_mask` over this micro-batch's response tokens):
    batch.micro_batches = 1 gives the paper's per-batch rule; with more, each micro-batch keeps its own top
    fraction, so that variant alone depends on the micro-batching. Everything else is row-local or per token."""
    st = p.stats(temperature=o.rollout_temperature)
    logp = st["tempered_logprob"]
    mb, m = p.batch, p.tokens["mask"]
    count = jnp.sum(m)
    old = jax.lax.stop_gradient(logp) if o.on_policy else mb["old_logp"]
    weight, extra = None, {}
    if o.rollout_correction != "none":
        weight, rc = losses.rollout_correction_weights(old, mb["sampler_logp"], m, mode=o.rollout_correction,
                                                       threshold=o.rollout_correction_threshold)
        extra.update(mismatch_kl=rc["mismatch_kl"] * count, rollout_is_max=rc["ratio_max"],
                     rollout_is_min=rc["ratio_min"], rollout_is_capped_frac=rc["capped_frac"] * count,
                     rollout_is_weight_mean=rc["weight_mean"] * count)
    if o.entropy_token_fraction < 1.0:
        sel = losses.top_fraction_mask(st["tempered_entropy"], m, o.entropy_token_fraction)
        weight = sel if weight is None else weight * sel
        extra["entropy_selected_frac"] = jnp.sum(sel)
    clip_low, clip_high = o.policy_clip
    loss, met = losses.grpo_loss(
        logp, old, mb["advantages"], m, ref_logp=mb["ref_logp"] if o.kl_coef else None, clip_low=clip_low,
        clip_high=clip_high, dual_clip=o.dual_clip if o.dual_clip > 1 else None, kl_coef=o.kl_coef,
        kl_estimator=o.kl_estimator, aggregation=o.aggregation, max_len=o.max_len or None,
        num_tokens=p.den["tokens"], num_seqs=p.den["seqs"], policy_loss=o.policy_loss, pg_weight=weight)
    lp_d = jax.lax.stop_gradient(logp)
    sums = {k: met[k] * count for k in ("clipfrac_low", "clipfrac_high", "clipfrac_dual", "ratio_mean")}
    # entropy at the rollout temperature (the distribution sampled, as verl's actor/entropy) and at T = 1
    sums.update(entropy=jnp.sum(st["tempered_entropy"] * m),
                entropy_untempered=jnp.sum(jax.lax.stop_gradient(st["entropy"]) * m),
                logprob_gap=jnp.sum(jnp.abs(lp_d - mb["sampler_logp"]) * m),
                nll=jnp.sum(-lp_d * m), ratio_max=met["ratio_max"], ratio_min=met["ratio_min"], **extra)
    if o.kl_coef:
        sums["kl"] = met["kl"] * count
    return loss, sums


def _grpo_metrics(o: GRPOOptions) -> dict[str, Metric]:
    out = {k: Metric("tokens") for k in ("clipfrac_low", "clipfrac_high", "clipfrac_dual", "ratio_mean", "entropy",
                                         "entropy_untempered", "logprob_gap", "nll")}
    out.update(ratio_max=Metric(None, "max"), ratio_min=Metric(None, "min"))
    if o.kl_coef:
        out["kl"] = Metric("tokens")
    if o.rollout_correction != "none":  # importance weights pi_old / pi_sampler (per sequence for sequence_mask)
        out.update(mismatch_kl=Metric("tokens"), rollout_is_capped_frac=Metric("tokens"),
                   rollout_is_weight_mean=Metric("tokens"), rollout_is_max=Metric(None, "max"),
                   rollout_is_min=Metric(None, "min"))
    if o.entropy_token_fraction < 1.0:
        out["entropy_selected_frac"] = Metric("tokens")  # share of response tokens in the policy-gradient term
    return out


# --- statistics over the whole step (a first, gradient-free pass; see step.step_statistics) ---------------------------
# each: (options, logprob, entropy, token view, segment_ids), all [rows, T] over the step's flattened micro-batches
# -> (the name the loss reads it under in its micro-batch, [rows, T] float32)

def ppl_weight_statistic(o: OXAOptions, lp, ent, v, segment_ids):
    """OXA's perplexity weights of the step's CE examples, normalised to mean 1 over all of them."""
    return "ppl_weight", losses.perplexity_token_weights(lp, v["mask"], v["sample_norm"], segment_ids,
                                                         alpha=o.weight_alpha, valid=~v["neg"])


def entropy_select_statistic(o: EntropyRegOptions, lp, ent, v, segment_ids):
    """The ceil(rho * n) highest-entropy tokens among the step's n counted tokens (0/1)."""
    return "entropy_select", losses.top_fraction_mask(ent, v["mask"], o.top_fraction)


class Objective(NamedTuple):
    """One method: its options class, how a run config gives them, its loss and metrics, whether its batches are
    rollouts (every micro-batch holds tokens: no all-padding skip), the step-wide statistic its options need
    (`step_statistic(options)`: one of the *_statistic functions above, or None), whether its batches carry UL
    (negative) rows, and whether its options keep a lagged teacher copy of the parameters."""

    options: type
    options_of: Callable[[Any], Any]
    loss: Callable[[MicroBatch, Any], tuple[jax.Array, dict[str, jax.Array]]]
    metrics: Callable[[Any], dict[str, Metric]]
    rl: bool = False
    step_statistic: Callable[[Any], Callable | None] = lambda o: None
    ul_rows: bool = False
    lagged_teacher: Callable[[Any], bool] = lambda o: False


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective(SFTOptions, lambda cfg: SFTOptions(normalization=cfg.loss.sft_normalization), sft_loss,
                     lambda o: dict(SFT_FAMILY_METRICS)),
    "oxa": Objective(OXAOptions, lambda cfg: OXAOptions.from_config(cfg.loss.oxa), oxa_loss, lambda o: {
        **SFT_FAMILY_METRICS, "ce": Metric("positive"), "ul": Metric("negative"), "ul_entropy": Metric("ul_tokens"),
        "ce_entropy": Metric("ce_tokens")},
        step_statistic=lambda o: ppl_weight_statistic if o.sample_weighting == "perplexity" else None,
        ul_rows=True),
    "curio": Objective(CurioOptions, lambda cfg: CurioOptions.from_config(cfg.loss.curio), curio_loss, lambda o: {
        **SFT_FAMILY_METRICS, "sed": Metric("tokens"), "tau": Metric("tokens"), "teacher_entropy": Metric("tokens")},
        lagged_teacher=lambda o: o.teacher == "lagged"),
    "entropy_reg": Objective(EntropyRegOptions, lambda cfg: EntropyRegOptions.from_config(cfg.loss.entropy_reg),
                             entropy_reg_loss, lambda o: {**SFT_FAMILY_METRICS, "entropy_bonus": Metric(None)},
                             step_statistic=lambda o: entropy_select_statistic if o.top_fraction < 1.0 else None),
    "dft": Objective(DFTOptions, lambda cfg: DFTOptions(), dft_loss, lambda o: dict(SFT_FAMILY_METRICS)),
    "grpo": Objective(GRPOOptions, GRPOOptions.from_config, grpo_loss, _grpo_metrics, rl=True),
}

def ul_rows(cfg) -> int:
    """UL (negative) sequences per optimizer step of `cfg`'s method: batch.ul_size for a method whose batches carry
    UL rows (oxa), else 0."""
    return cfg.batch.ul_size if OBJECTIVES[cfg.method].ul_rows else 0


def rows_per_step(cfg) -> int:
    """Sequences per optimizer step: global_size + ul_rows (SFT family); an RL method's rollouts of one
    mini-batch, grpo.prompts_per_step x grpo.group_size / grpo.mini_batches."""
    if OBJECTIVES[cfg.method].rl:
        return cfg.grpo.prompts_per_step * cfg.grpo.group_size // cfg.grpo.mini_batches
    return cfg.batch.global_size + ul_rows(cfg)


METHODS = tuple(k for k, v in OBJECTIVES.items() if not v.rl)
RL_METHODS = tuple(k for k, v in OBJECTIVES.items() if v.rl)
