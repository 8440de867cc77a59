"""AdamW with warm-up + cosine or constant schedules, global-norm clipping and decoupled weight decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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


def make_optimizer(cfg, total_steps: int):
    """(optax transformation, schedule fn) from the `optim` config section."""
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(round(cfg.warmup_ratio * total_steps))
    schedule = lr_schedule(cfg.lr, total_steps, schedule=cfg.schedule, warmup_steps=warmup,
                           min_lr_ratio=cfg.min_lr_ratio, horizon_factor=cfg.cosine_horizon_factor)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule
