"""The pure, sharded train step of every method (SFT-family and GRPO).

What a method optimises is its row of `objectives.OBJECTIVES` (options, loss over the per-token statistics,
metrics); this module owns what all methods share. `make_train_step` returns a jitted
`step(state, batch) -> (state, metrics)` over a `TrainState` pytree:
  * the model is split once (graphdef outside, parameters in the state) and merged inside the trace;
  * gradient accumulation is a `lax.scan` over the batch's leading micro-batch axis; every loss is normalised
    by denominators taken from the *whole* batch (token count, CE / UL example counts), so the sum over
    micro-batches equals the loss of the full batch, whatever the number of micro-batches;
  * the head runs through `losses.chunked_token_stats`, never building [B, T, V] logits;
  * a non-finite gradient norm skips the update (parameters and optimiser state unchanged) and is reported; the
    logged `lr` is the one the optimizer uses for this step's update (its schedule counts applied updates only);
  * with LoRA (`model.config.lora_spec`), `params` are the adapters only and the frozen base rides in
    `TrainState.frozen` (no gradient, no optimizer state; donated and passed through unchanged);
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
from exploresft_jax.data.pipeline import packing_mode
from exploresft_jax.losses.reduce import safe_divide
from exploresft_jax.models import lora
from exploresft_jax.train.objectives import METHODS, OBJECTIVES, RL_METHODS, MicroBatch
from exploresft_jax.train.optim import schedule_count


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """step: [] int32 optimizer steps taken; params: nnx.State of the trained parameters (every nnx.Param, or the
    LoRA adapters); opt_state: optax state; teacher: CurioSFT's lagged copy of params (None otherwise; with LoRA a
    lagged copy of the adapters on the same base); frozen: the frozen base with LoRA (None otherwise).
    `weights(state)` is the whole model's state."""

    step: jax.Array
    params: Any
    opt_state: Any
    teacher: Any = None
    frozen: Any = None


def weights(params, frozen=None):
    """The model's whole nnx.State from the trained part and the frozen base (`nnx.merge(graphdef, weights(...))`
    gives the model): `params` itself without a frozen base."""
    return params if frozen is None else nnx.merge_state(params, frozen)


def split_model(model) -> tuple[Any, Any, Any]:
    """(graphdef, trained params, frozen base or None) of a model: LoRA adapters and the rest when the model has
    adapters (`config.lora_spec`), else every nnx.Param and None."""
    spec = model.config.lora_spec
    if spec is None:
        graphdef, params = nnx.split(model)
        return graphdef, params, None
    return nnx.split(model, lora.LoRAParam, ...)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the step (hashable): the method, the loss head's tile sizes, the method's own options
    (the frozen dataclass `OBJECTIVES[method].options`, e.g. `OXAOptions`; its defaults when not given) and
    whether rows are packed.

    packed: rows may hold several examples (segment ids 1, 2, ...). False promises one example per row,
    right-padded (tokens first, segment id 1 then 0): GRPO's rollouts and `data.packing="none"`. The model
    then gets no segment ids, only the padding mask, which lets attention use masks without segment ids (the
    cudnn backend: cuDNN's fused attention instead of the Triton kernel); the values are the same.
    """

    method: str = "sft"
    chunk_size: int = 1024
    vocab_chunk_size: int = 8192
    options: Any = None
    packed: bool = True

    def __post_init__(self):  # checked once when the step is configured, not inside the traced loss
        if self.method not in OBJECTIVES:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS + RL_METHODS}")
        kind = OBJECTIVES[self.method].options
        if self.options is None:
            object.__setattr__(self, "options", kind())
        elif not isinstance(self.options, kind):
            raise TypeError(f"method {self.method!r} takes {kind.__name__} options, got {type(self.options).__name__}")

    @classmethod
    def from_config(cls, cfg) -> StepConfig:
        """From a run config: `cfg.method` and its section (loss.oxa, loss.curio, loss.entropy_reg, grpo, ...);
        packed=False for RL methods (one right-padded rollout per row) and `data.packing="none"` (one example per
        row, right-padded by the pipeline)."""
        packed = not (OBJECTIVES[cfg.method].rl or packing_mode(cfg.data.packing) == "none")
        return cls(method=cfg.method, chunk_size=int(cfg.loss.chunk_size),
                   vocab_chunk_size=int(cfg.loss.vocab_chunk_size),
                   options=OBJECTIVES[cfg.method].options_of(cfg), packed=packed)

    @property
    def objective(self):
        return OBJECTIVES[self.method]

    @property
    def lagged_teacher(self) -> bool:
        return self.objective.lagged_teacher(self.options)


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


def forward_rows(model, mb, *, packed: bool = True) -> jax.Array:
    """Hidden states [rows, T, D] of a micro-batch's rows (tokens, positions, segment_ids). packed=False (one
    right-padded example per row, see `StepConfig.packed`) passes the padding mask only, no segment ids."""
    seg = mb["segment_ids"]
    return model(mb["tokens"], mb["positions"], segment_ids=seg if packed else None, attn_mask=seg > 0)


def _forward(graphdef, params, mb, frozen=None, *, packed: bool = True):
    model = nnx.merge(graphdef, weights(params, frozen))
    return forward_rows(model, mb, packed=packed), model.head_weight()


def needs_step_statistics(sc: StepConfig) -> bool:
    """True when the loss needs `step_statistics` (a coupling across the whole step's batch)."""
    return sc.objective.step_statistic(sc.options) is not None


def step_statistics(params, batch, *, graphdef, sc: StepConfig, frozen=None) -> dict[str, jax.Array]:
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
            hidden, w = _forward(graphdef, params, mb, frozen, packed=sc.packed)
            st = losses.chunked_token_stats(hidden, w, mb["labels"], chunk_size=sc.chunk_size,
                                            vocab_chunk_size=sc.vocab_chunk_size)
            return st["logprob"], st["entropy"]

        zeros = jnp.zeros(mb["labels"].shape, jnp.float32)
        return jax.lax.cond(jnp.any(mb["loss_mask"] > 0), run, lambda _: (zeros, zeros), mb)

    lp, ent = jax.lax.map(one, batch)
    v = token_view(batch)
    shape = lp.shape
    rows = lambda x: x.reshape(-1, shape[-1])  # noqa: E731  [micro * rows, T]: one flat batch of rows
    statistic = sc.objective.step_statistic(sc.options)
    name, stat = statistic(sc.options, rows(lp), rows(ent), {k: rows(x) for k, x in v.items()},
                           rows(batch["segment_ids"]))
    return {name: stat.reshape(shape)}


def micro_loss(params, teacher, mb, den, *, graphdef, sc: StepConfig, frozen=None):
    """Loss of one micro-batch, normalised by the global denominators `den`, and its metric contributions.

    Returns (loss, sums): `sums` holds one float32 scalar per metric that `sc.objective.metrics` declares,
    to be combined over micro-batches by that metric's reduction (see `objectives.Metric`).
    """
    hidden, w = _forward(graphdef, params, mb, frozen, packed=sc.packed)
    teacher_forward = lambda: _forward(graphdef, jax.lax.stop_gradient(teacher), mb, frozen,  # noqa: E731
                                       packed=sc.packed)
    p = MicroBatch(hidden=hidden, head_weight=w, batch=mb, tokens=token_view(mb), den=den,
                   teacher_forward=teacher_forward, chunk_size=sc.chunk_size, vocab_chunk_size=sc.vocab_chunk_size)
    with jax.named_scope(f"loss_{sc.method}"):
        loss, sums = sc.objective.loss(p, sc.options)
    declared = sc.objective.metrics(sc.options)
    if set(sums) != set(declared):
        raise ValueError(f"method {sc.method!r}: its loss returned metrics {sorted(sums)}, its table row declares "
                         f"{sorted(declared)}")
    return loss, sums


def _finalise_metrics(sums, den, sc: StepConfig) -> dict[str, jax.Array]:
    out = {k: safe_divide(sums[k], den[m.per]) if m.per else sums[k]
           for k, m in sc.objective.metrics(sc.options).items()}
    out["tokens"] = den["tokens"]
    return out


def train_step(state: TrainState, batch, *, graphdef, tx, schedule, sc: StepConfig):
    """One optimizer step over a [micro, rows, T] batch (see the module docstring); the micro axis may differ
    between calls (each size compiles once)."""
    teacher = state.teacher
    if sc.lagged_teacher:
        o = sc.options
        sync = (state.step + 1) % o.sync_every == 0
        teacher = jax.tree.map(lambda t, p: jnp.where(sync, (1 - o.alpha) * t + o.alpha * p, t), teacher,
                               state.params)
    den = batch_denominators(batch)
    extra = step_statistics(state.params, batch, graphdef=graphdef, sc=sc, frozen=state.frozen)
    if "entropy_select" in extra:
        den["selected"] = jnp.sum(extra["entropy_select"])
    batch = {**batch, **extra}
    grad_fn = jax.value_and_grad(functools.partial(micro_loss, graphdef=graphdef, sc=sc, frozen=state.frozen),
                                 has_aux=True)
    metrics = sc.objective.metrics(sc.options)

    def add_micro(carry, mb):
        g_acc, loss_acc, sums_acc = carry
        (loss, sums), g = grad_fn(state.params, teacher, mb, den)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        sums_acc = {k: metrics[k].combine(sums_acc[k], v.astype(jnp.float32)) for k, v in sums.items()}
        return g_acc, loss_acc + loss, sums_acc

    def accumulate(carry, mb):
        if sc.objective.rl:  # rollout micro-batches always hold tokens
            return add_micro(carry, mb), None
        # A packed step's bucket ends in all-padding micro-batches: skip their forward and backward passes.
        busy = jnp.any(mb["loss_mask"] > 0)
        return jax.lax.cond(busy, lambda c: add_micro(c, mb), lambda c: c, carry), None

    zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    zeros_sums = {k: jnp.asarray(m.identity, jnp.float32) for k, m in metrics.items()}
    (grads, loss, sums), _ = jax.lax.scan(accumulate, (zeros_g, jnp.zeros((), jnp.float32), zeros_sums), batch)

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                           opt_state=keep(new_opt, state.opt_state), teacher=teacher, frozen=state.frozen)
    lr = schedule(schedule_count(state.opt_state, state.step))  # the lr of this step's update, if applied
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "skipped": (~finite).astype(jnp.int32),
               **_finalise_metrics(sums, den, sc)}
    return new_state, metrics


def train_state_shardings(params, tx, sc: StepConfig, frozen=None) -> TrainState | None:
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
                      teacher=param_sh if sc.lagged_teacher else None,
                      frozen=None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen))


def init_train_state(model, tx, sc: StepConfig) -> tuple[Any, TrainState]:
    """(graphdef, TrainState) from a model; optimiser state (and teacher) placed like the parameters. With LoRA
    the state trains the adapters and holds the base as `frozen` (`split_model`)."""
    graphdef, params, frozen = split_model(model)
    teacher = jax.tree.map(jnp.copy, params) if sc.lagged_teacher else None

    def make(params, teacher):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), teacher=teacher)

    shardings = train_state_shardings(params, tx, sc)
    make = jax.jit(make) if shardings is None else jax.jit(make, out_shardings=shardings)
    state = make(params, teacher)
    return graphdef, dataclasses.replace(state, frozen=frozen)


def make_train_step(graphdef, tx, schedule, sc: StepConfig, state_shardings, batch_shardings, metric_sharding):
    """The jitted step with explicit in/out shardings; the incoming state is donated."""
    fn = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, sc=sc)
    return jax.jit(fn, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, metric_sharding), donate_argnums=0)
