"""AdamW with warm-up + cosine or constant schedules, global-norm clipping and decoupled weight decay.

Two memory-lean variants of the optimizer state, chosen in the `optim` section (default: neither, i.e. AdamW with
float32 moments, optax.adamw's own state):

  * `mu_dtype=bfloat16`: the first moment is stored in bfloat16 (optax's mu_dtype): it is updated and applied in
    float32 and rounded when stored, so the update is Adam's up to that rounding (8 bits of mantissa on an average
    that moves by 1 - b1 = 10% a step). Halves the first moment.
  * `second_moment=factored`: `scale_by_factored_adam`, Adam with Adafactor's factored second moment
    (Shazeer & Stern 2018) on every leaf whose two largest dims are >= `factor_min_dim`: running means of g^2
    over the rows and over the columns (bias-corrected as Adam's) instead of one per parameter, the second moment
    read back as their rank-1 product row_i * col_j / mean(row). The first moment, its bias correction, eps outside
    the square root, the clipping, decoupled weight decay and the schedule are AdamW's. Leaves not factored
    (norms, biases, small matrices) keep Adam's full second moment exactly.

Both keep float32 master parameters (a 1e-5 update is below bfloat16's resolution of a weight).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from exploresft_jax.configs.schema import OptimSection


def lr_schedule(lr: float, total_steps: int, *, schedule: str = "cosine", warmup_steps: int = 0,
                min_lr_ratio: float = 0.0, horizon_factor: float = 1.0):
    """step -> learning rate. Linear warm-up lr * step / warmup_steps (0 at step 0, as HuggingFace's schedulers:
    the first update is taken at lr 0), then cosine decay to lr * min_lr_ratio over
    (total_steps * horizon_factor - warmup_steps) steps, or constant. `step` counts applied updates from 0."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"optim.schedule={schedule!r}; expected 'cosine' or 'constant'")
    warmup_steps = max(0, int(warmup_steps))

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum(1.0, step / max(warmup_steps, 1)) if warmup_steps else 1.0
        if schedule == "constant":
            return lr * warm
        decay_steps = max(1.0, total_steps * horizon_factor - warmup_steps)
        t = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cos = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * t))
        return lr * jnp.where(step < warmup_steps, warm, cos)

    return fn


def schedule_count(opt_state, default):
    """The step count the optimizer's learning-rate schedule reads ([] int32): optax's ScaleByScheduleState count,
    which advances only on applied updates (a skipped, non-finite step keeps the old optimizer state). `default`
    when the optimizer has no schedule state."""
    is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    for leaf in jax.tree.leaves(opt_state, is_leaf=is_sched):
        if is_sched(leaf):
            return leaf.count
    return default


def decay_mask(params):
    """True on matrices (kernels, embeddings, the head); False on norms and biases."""

    def one(path, _):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return not ("norm" in name or "bias" in name)

    return jax.tree_util.tree_map_with_path(one, params)


def factored_dims(shape, min_dim: int) -> tuple[int, int] | None:
    """(second largest, largest) axis of a leaf whose second moment `scale_by_factored_adam` factors; None when
    it keeps it full: fewer than 2 dims, or the second largest below `min_dim`. Stacked layers [L, d, f] factor
    over (d, f), one estimate per layer."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape, kind="stable")
    if shape[order[-2]] < min_dim:
        return None
    return int(order[-2]), int(order[-1])


class ScaleByFactoredAdamState(NamedTuple):
    """`scale_by_factored_adam`'s state. Placeholders are float32 [1]."""

    count: jax.Array  # [] int32: updates taken
    mu: optax.Updates  # first moment, shaped like the parameters (mu_dtype); placeholders when b1 = 0
    nu: optax.Updates  # second moment of the leaves not factored; a placeholder on factored ones
    nu_row: optax.Updates  # factored leaves: running mean of g^2 over the largest axis; else a placeholder
    nu_col: optax.Updates  # factored leaves: running mean of g^2 over the second largest axis; else a placeholder


def scale_by_factored_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, min_dim: int = 128,
                           mu_dtype=jnp.float32, epsilon_sq: float = 1e-30) -> optax.GradientTransformation:
    """Adam's scaling m_hat / (sqrt(v_hat) + eps) with the second moment of large leaves factored (module
    docstring). `epsilon_sq` is added to g^2 on factored leaves (Adafactor's epsilon1) so that an all-zero
    gradient reads back as a zero second moment rather than 0 / 0. A leaf that is not factored follows
    `optax.scale_by_adam` exactly. b1 = 0 stores no first moment (m = g: Adafactor without momentum)."""
    mu_dtype = jnp.dtype(mu_dtype)
    one = lambda: jnp.zeros((1,), jnp.float32)  # noqa: E731
    keep_mu = b1 > 0

    def init_fn(params):
        def nu(p):
            return one() if factored_dims(p.shape, min_dim) else jnp.zeros(p.shape, jnp.float32)

        def row_col(p, drop):
            dims = factored_dims(p.shape, min_dim)
            return one() if dims is None else jnp.zeros(np.delete(p.shape, dims[drop]), jnp.float32)

        return ScaleByFactoredAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(lambda p: jnp.zeros(p.shape, mu_dtype) if keep_mu else one(), params),
            nu=jax.tree.map(nu, params), nu_row=jax.tree.map(lambda p: row_col(p, 1), params),
            nu_col=jax.tree.map(lambda p: row_col(p, 0), params))

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        bc1 = 1 - jnp.asarray(b1, jnp.float32) ** count
        bc2 = 1 - jnp.asarray(b2, jnp.float32) ** count

        def one_leaf(g, mu, nu, row, col):
            g = g.astype(jnp.float32)
            m = (1 - b1) * g + b1 * mu.astype(jnp.float32) if keep_mu else g
            dims = factored_dims(g.shape, min_dim)
            if dims is None:
                v = (1 - b2) * (g * g) + b2 * nu
                v_read = v
            else:
                a, b = dims  # a: second largest axis, b: the largest
                g2 = g * g + epsilon_sq
                row = (1 - b2) * jnp.mean(g2, axis=b) + b2 * row  # indexed by a (and the other axes)
                col = (1 - b2) * jnp.mean(g2, axis=a) + b2 * col  # indexed by b
                row_mean = jnp.mean(row, axis=a if a < b else a - 1, keepdims=True)
                v_read = jnp.expand_dims(row / row_mean, b) * jnp.expand_dims(col, a)
                v = nu
            u = (m / bc1) / (jnp.sqrt(v_read / bc2) + eps)
            return u, m.astype(mu_dtype) if keep_mu else mu, v, row, col

        out = jax.tree.map(one_leaf, updates, state.mu, state.nu, state.nu_row, state.nu_col)
        treedef = jax.tree.structure(updates)
        u, mu, nu, row, col = (jax.tree.unflatten(treedef, list(x)) for x in zip(*treedef.flatten_up_to(out)))
        return u, ScaleByFactoredAdamState(count=count, mu=mu, nu=nu, nu_row=row, nu_col=col)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(cfg, total_steps: int):
    """(optax transformation, schedule fn) from the `optim` config section (a ConfigDict; fields it lacks take
    the schema's defaults). Default: clip_by_global_norm + optax.adamw with float32 moments. The lean options
    (`mu_dtype`, `second_moment`: module docstring) change only the moments' storage and the second moment's
    estimate: the chain's clipping, decoupled weight decay and schedule state (`schedule_count`) are AdamW's."""
    cfg = OptimSection.from_config(cfg)
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(round(cfg.warmup_ratio * total_steps))
    schedule = lr_schedule(cfg.lr, total_steps, schedule=cfg.schedule, warmup_steps=warmup,
                           min_lr_ratio=cfg.min_lr_ratio, horizon_factor=cfg.cosine_horizon_factor)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    mu_dtype = jnp.dtype(cfg.mu_dtype)
    if cfg.second_moment == "full":
        parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 mask=decay_mask, mu_dtype=None if mu_dtype == jnp.float32 else mu_dtype))
    else:  # optax.adamw's chain (same state layout) with the factored scaling in place of scale_by_adam
        parts.append(optax.chain(
            scale_by_factored_adam(cfg.b1, cfg.b2, cfg.eps, min_dim=cfg.factor_min_dim, mu_dtype=mu_dtype),
            optax.add_decayed_weights(cfg.weight_decay, decay_mask), optax.scale_by_learning_rate(schedule)))
    return optax.chain(*parts), schedule
