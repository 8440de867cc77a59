"""Validation of training configs: every bad value fails at start with one line naming the field.

Each field's type, allowed values and bounds are declared once, in `exploresft_jax.configs.schema`; `validate`
parses the config against it (`schema.parse`) and then checks what couples several fields or needs the file
system: the method (a registry entry of `objectives.OBJECTIVES`), files that must exist, rows that micro-batches
must divide, the GRPO knobs that depend on each other.
"""

from __future__ import annotations

from pathlib import Path

from exploresft_jax.configs import schema
from exploresft_jax.data.pipeline import packing_mode
from exploresft_jax.losses.grpo import ADVANTAGE_ESTIMATORS
from exploresft_jax.train.objectives import OBJECTIVES, rows_per_step


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(cfg) -> schema.RunConfig:
    """Raises ValueError('config.<field>=...: reason') on the first invalid setting; fills fields `cfg` lacks (a
    config written before they existed) with their defaults, in place; returns the typed config."""

    def fail(field, why):
        raise ValueError(f"config.{field}={_get(cfg, field)!r}: {why}")

    if cfg.method not in OBJECTIVES:
        fail("method", f"expected one of {tuple(OBJECTIVES)}")
    run = schema.parse(cfg)
    schema.complete(cfg)  # a config written before a field existed gets its default: code reads every field
    rl = OBJECTIVES[run.method].rl
    if run.model.init == "hf":
        if not run.model.path:
            fail("model.path", "model.init='hf' needs a HuggingFace model folder")
        if not (Path(run.model.path) / "config.json").exists():
            fail("model.path", "no config.json in that folder")
    elif run.model.preset not in schema.ModelSection.preset_choices():
        fail("model.preset", f"expected one of {schema.ModelSection.preset_choices()} for model.init='random'")
    if not run.data.synthetic and not rl:
        if not run.data.train_files:
            fail("data.train_files", "give at least one JSONL / JSON / Parquet file (or data.synthetic)")
        for f in run.data.train_files:
            if not Path(f).is_file():
                fail("data.train_files", f"file not found: {f}")
    if run.tokenizer.train_bpe_vocab <= 0 and run.model.init == "random" and not run.tokenizer.path:
        fail("tokenizer.path", "a random model needs tokenizer.path or tokenizer.train_bpe_vocab > 0")
    if not rl:  # GRPO builds (and checks) its own rollout batches
        rows = rows_per_step(cfg)
        mode = packing_mode(run.data.packing)
        per_micro = run.batch.rows_per_micro
        if per_micro == 0 and rows % run.batch.micro_batches:
            fail("batch.micro_batches", f"must divide the {rows} sequences of a step")
        if per_micro > 0 and mode != "examples" and per_micro * run.batch.micro_batches != rows:
            fail("batch.rows_per_micro", f"x batch.micro_batches must equal the {rows} rows of a step with "
                                         f"data.packing={mode!r} (free only with 'examples')")
    if run.optim.epochs <= 0 and run.optim.num_steps <= 0:
        fail("optim.num_steps", "set optim.num_steps or optim.epochs > 0")
    _validate_grpo_knobs(cfg, run, fail)
    return run


def _validate_grpo_knobs(cfg, run: schema.RunConfig, fail) -> None:
    """The GRPO knobs that depend on each other (each one's own values are the schema's)."""
    g = run.grpo
    if ADVANTAGE_ESTIMATORS[g.advantage_estimator].uses_k and not g.passk_k <= g.group_size:
        fail("grpo.passk_k", f"must be in [1, grpo.group_size={g.group_size}] with "
                             f"advantage_estimator={g.advantage_estimator!r}")
    if g.overlong_penalty and not g.overlong_buffer <= g.max_new_tokens:
        fail("grpo.overlong_buffer", f"must be in [0, grpo.max_new_tokens={g.max_new_tokens}] (0: a quarter)")
    if OBJECTIVES[run.method].rl:
        try:
            OBJECTIVES[run.method].options_of(cfg)
        except ValueError as e:
            raise ValueError(f"config.{e}") from None


def validate_grpo(cfg) -> None:
    """What a GRPO run needs beyond `validate`: update batches that its mini-batches and micro-batches divide,
    prompts (files that exist, or the synthetic task), and the synthetic task for a random model's warm-up."""
    g = cfg.grpo

    def fail(field, why):
        raise ValueError(f"config.grpo.{field}={g[field]!r}: {why}")

    rows = g.prompts_per_step * g.group_size
    if rows % (g.mini_batches * cfg.batch.micro_batches):
        fail("mini_batches", f"mini_batches x batch.micro_batches must divide the {rows} rollouts per iteration")
    if not cfg.data.synthetic and not g.prompt_files:
        fail("prompt_files", "give RL prompt files (or data.synthetic)")
    for f in g.prompt_files:
        if not Path(f).is_file():
            fail("prompt_files", f"file not found: {f}")
    if cfg.model.init == "random" and g.sft_warmup_steps > 0 and not cfg.data.synthetic:
        fail("sft_warmup_steps", "the warm-up trains on the synthetic task: set data.synthetic")
