"""Validation of training configs: every bad value fails at start with one line naming the field."""

from __future__ import annotations

from pathlib import Path

from exploresft_jax.data.pipeline import PACKING_MODES, packing_mode
from exploresft_jax.train.objectives import GRPOOptions
from exploresft_jax.train.step import METHODS, RL_METHODS

_CHOICES = {
    "model.init": ("hf", "random"),
    "model.dtype": ("bfloat16", "float32"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat_policy": ("none", "full", "dots", "dots_saveable"),
    "model.attention": ("auto", "splash", "cudnn", "blockwise", "dense"),
    "data.format": ("auto", "sft", "alpaca", "messages"),
    "data.overlong": ("drop", "truncate"),
    "data.synthetic": ("", "arithmetic"),
    "optim.schedule": ("cosine", "constant"),
    "loss.sft_normalization": ("token", "sample"),
    "loss.oxa.sample_weighting": ("none", "data", "perplexity"),
    "loss.curio.divergence": ("k2", "forward_kl", "reverse_kl"),
    "loss.curio.teacher": ("lagged", "live"),
    "grpo.answer_extraction": ("boxed_only", "standard", "permissive"),
    "grpo.advantage_estimator": ("grpo", "passk"),
}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(cfg) -> None:
    """Raises ValueError('config.<field>=...: reason') on the first invalid setting."""

    def fail(field, why):
        raise ValueError(f"config.{field}={_get(cfg, field)!r}: {why}")

    if cfg.method not in METHODS + RL_METHODS:
        fail("method", f"expected one of {METHODS + RL_METHODS}")
    for field, choices in _CHOICES.items():
        try:
            value = _get(cfg, field)
        except (KeyError, AttributeError):
            continue
        if value not in choices:
            fail(field, f"expected one of {choices}")
    if cfg.model.init == "hf":
        if not cfg.model.path:
            fail("model.path", "model.init='hf' needs a HuggingFace model folder")
        if not (Path(cfg.model.path) / "config.json").exists():
            fail("model.path", "no config.json in that folder")
    elif cfg.model.preset not in ("qwen2p5_math_1p5b", "qwen2p5_math_7b", "custom"):
        fail("model.preset", "expected qwen2p5_math_1p5b | qwen2p5_math_7b | custom for model.init='random'")
    if not cfg.data.synthetic and cfg.method not in RL_METHODS:
        if not cfg.data.train_files:
            fail("data.train_files", "give at least one JSONL / JSON / Parquet file (or data.synthetic)")
        for f in cfg.data.train_files:
            if not Path(f).is_file():
                fail("data.train_files", f"file not found: {f}")
    if cfg.tokenizer.train_bpe_vocab <= 0 and cfg.model.init == "random" and not cfg.tokenizer.path:
        fail("tokenizer.path", "a random model needs tokenizer.path or tokenizer.train_bpe_vocab > 0")
    for field in ("batch.global_size", "batch.micro_batches", "data.max_length", "loss.chunk_size",
                  "loss.vocab_chunk_size", "checkpoint.every_steps", "checkpoint.keep", "log.every_steps"):
        if _get(cfg, field) < 1:
            fail(field, "must be >= 1")
    rows = cfg.batch.global_size + (cfg.batch.ul_size if cfg.method == "oxa" else 0)
    if cfg.method == "oxa" and cfg.batch.ul_size < 0:  # 0: the CE-only arm (OXA-MLE)
        fail("batch.ul_size", "must be >= 0 (0: CE only, no UL data)")
    if cfg.method not in RL_METHODS:  # GRPO builds (and checks) its own rollout batches
        try:
            mode = packing_mode(cfg.data.packing)
        except ValueError:
            fail("data.packing", f"expected one of {PACKING_MODES} (or False / True = 'none' / 'tokens')")
        per_micro = cfg.batch.get("rows_per_micro", 0)
        if per_micro < 0:
            fail("batch.rows_per_micro", "must be >= 0 (0: the step's rows / batch.micro_batches)")
        if per_micro == 0 and rows % cfg.batch.micro_batches:
            fail("batch.micro_batches", f"must divide the {rows} sequences of a step")
        if per_micro > 0 and mode != "examples" and per_micro * cfg.batch.micro_batches != rows:
            fail("batch.rows_per_micro", f"x batch.micro_batches must equal the {rows} rows of a step with "
                                         f"data.packing={mode!r} (free only with 'examples')")
    if cfg.optim.lr <= 0:
        fail("optim.lr", "must be > 0")
    if not 0 <= cfg.optim.warmup_ratio < 1:
        fail("optim.warmup_ratio", "must be in [0, 1)")
    if cfg.optim.epochs <= 0 and cfg.optim.num_steps <= 0:
        fail("optim.num_steps", "set optim.num_steps or optim.epochs > 0")
    if not 0 < cfg.loss.curio.alpha <= 1:
        fail("loss.curio.alpha", "must be in (0, 1]")
    if cfg.loss.curio.sync_every < 1:
        fail("loss.curio.sync_every", "must be >= 1")
    if not cfg.loss.curio.tau_min <= cfg.loss.curio.tau_max:
        fail("loss.curio.tau_min", "must be <= loss.curio.tau_max")
    if not 0 < cfg.loss.entropy_reg.top_fraction <= 1:
        fail("loss.entropy_reg.top_fraction", "must be in (0, 1]")
    if "guard" in cfg:
        for field in ("guard.max_consecutive_skips", "guard.loss_spike_factor"):
            if _get(cfg, field) < 0:
                fail(field, "must be >= 0 (0: off)")
        for field in ("guard.spike_window", "guard.spike_min_history"):
            if _get(cfg, field) < 1:
                fail(field, "must be >= 1")
    _validate_grpo_rollout_knobs(cfg, fail)
    if len(tuple(cfg.mesh.shape)) != 3:
        fail("mesh.shape", "expected (data, fsdp, tensor)")


def _validate_grpo_rollout_knobs(cfg, fail) -> None:
    """The loop-side GRPO knobs (the step's own, grpo.policy_loss and friends, are checked by GRPOOptions)."""
    g = cfg.get("grpo")
    if g is None:
        return
    if cfg.method in RL_METHODS:  # the step's options check their own values (GRPOOptions): fail here, at start
        try:
            GRPOOptions.from_config(cfg)
        except ValueError as e:
            raise ValueError(f"config.{e}") from None
    if g.get("advantage_estimator", "grpo") == "passk" and not 1 <= g.passk_k <= g.group_size:
        fail("grpo.passk_k", f"must be in [1, grpo.group_size={g.group_size}] with advantage_estimator='passk'")
    if g.get("overlong_penalty", False):
        if not 0 <= g.overlong_buffer <= g.max_new_tokens:
            fail("grpo.overlong_buffer", f"must be in [0, grpo.max_new_tokens={g.max_new_tokens}] (0: a quarter)")
        if g.overlong_penalty_factor < 0:
            fail("grpo.overlong_penalty_factor", "must be >= 0")
