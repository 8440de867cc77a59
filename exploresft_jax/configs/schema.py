"""The training configuration's schema: every field declared once, with its type, allowed values, default and doc.

A run is configured by an ml_collections `ConfigDict` (what `--config configs/x.py` files return, overridable
with `--config.a.b=v`); this module is where its fields are *defined*:

  * `default_config()` builds the `ConfigDict` of every default (what `configs/base.py` returns);
  * `parse(cfg)` checks a `ConfigDict` against the schema once (unknown fields, types, allowed values, bounds) and
    returns the typed, frozen `RunConfig`; errors are one line naming the field: `config.grpo.top_p=1.5: ...`.
    A field missing from `cfg` (a config written before the field existed) takes its default here, and only here;
  * `complete(cfg)` fills such missing fields into the `ConfigDict` itself, so code reading `cfg.a.b` never needs
    a fallback.

Allowed values come from a `Literal[...]` annotation, or, for names that a registry owns (methods, attention
backends, policy losses, advantage estimators, rollout corrections, CurioSFT divergences, GRPO aggregations and
KL estimators), from that registry, looked up when a config is parsed: adding an entry to the registry is all it
takes for the config to accept it.
Cross-field rules (e.g. micro-batches dividing a step's rows) live in `exploresft_jax.train.config.validate`.

Why dataclasses rather than pydantic: the sections double as the frozen, hashable option objects that the jitted
train step takes as a static argument (`OXAOptions`, `CurioOptions`, ...), and the package already depends on
nothing that would bring pydantic.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from ml_collections import ConfigDict

# data.packing: one example per row | the same examples per step packed into rows | a fixed token budget per step
PACKING_MODES = ("none", "examples", "tokens")
# the largest KV page: the sampler's smallest attention window (`sampling.continuous.MIN_WINDOW`, which the
# Sampler checks too; kept here as a number so that parsing a config needs no JAX)
MAX_PAGE_SIZE = 64


class ConfigError(ValueError):
    """One invalid field: `field` (dotted path inside the section), `value` and `why`."""

    def __init__(self, field: str, value, why: str):
        self.field, self.value, self.why = field, value, why
        super().__init__(f"{field}={value!r}: {why}")

    def under(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}.{self.field}", self.value, self.why)


def F(default, doc: str, *, choices: Callable[[], tuple] | None = None, ge=None, gt=None, le=None, lt=None):
    """A schema field: its default, a one-line doc, and optionally a registry of allowed values (`choices`, a
    function returning them, called at validation) and numeric bounds."""
    meta = {"doc": doc, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda d=default: d, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --- registries the schema reads (imported when a config is checked, so the schema imports nothing heavy) -------

def _attention_backends() -> tuple:
    from exploresft_jax.models.attention import backend_choices

    return backend_choices()


def _policy_losses() -> tuple:
    from exploresft_jax.losses.grpo import POLICY_LOSSES

    return tuple(POLICY_LOSSES)


def _advantage_estimators() -> tuple:
    from exploresft_jax.losses.grpo import ADVANTAGE_ESTIMATORS

    return tuple(ADVANTAGE_ESTIMATORS)


def _rollout_corrections() -> tuple:
    from exploresft_jax.losses.grpo import ROLLOUT_CORRECTIONS

    return tuple(ROLLOUT_CORRECTIONS)


def _kl_estimators() -> tuple:
    from exploresft_jax.losses.grpo import KL_ESTIMATORS

    return KL_ESTIMATORS


def _aggregations() -> tuple:
    from exploresft_jax.losses.grpo import AGGREGATIONS

    return AGGREGATIONS


def _curio_divergences() -> tuple:
    from exploresft_jax.losses.curio import DIVERGENCES

    return tuple(DIVERGENCES)


def _extraction_modes() -> tuple:
    from exploresft_jax.rewards.extract import EXTRACTION_MODES

    return EXTRACTION_MODES


def _remat_policies() -> tuple:
    from exploresft_jax.models.qwen2 import REMAT_POLICIES

    return tuple(REMAT_POLICIES)


def _data_formats() -> tuple:
    from exploresft_jax.data.records import FORMATS

    return FORMATS


def _lora_targets() -> tuple:
    from exploresft_jax.models.lora import TARGETS

    return TARGETS


def _presets() -> tuple:
    from exploresft_jax.models.qwen2 import PRESETS

    return (*PRESETS, "custom")


# --- checking one value ---------------------------------------------------------------------------------------------

def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is tuple or origin is tuple:
        return isinstance(value, (tuple, list))
    if tp is dict or origin is dict:
        return isinstance(value, (dict, ConfigDict))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _describe(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "expected one of " + " | ".join(repr(a) for a in typing.get_args(tp))
    name = getattr(tp, "__name__", str(tp))
    return f"expected {name}"


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Section:
    """Base of every schema section (a frozen dataclass): construction checks each field's type, allowed values
    and bounds, so that a section that exists is valid."""

    def __post_init__(self):
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value, tp, meta = getattr(self, f.name), hints[f.name], f.metadata
            if dataclasses.is_dataclass(tp):
                continue  # a nested section checked itself
            if not _type_ok(value, tp):
                raise ConfigError(f.name, value, _describe(tp))
            if tp is float and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))
            if tp is tuple and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            if meta.get("choices") is not None:
                allowed = meta["choices"]()
                if value not in allowed:
                    raise ConfigError(f.name, value, f"expected one of {allowed}")
            for key, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                                  ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
                bound = meta.get(key)
                if bound is not None and not ok(value, bound):
                    raise ConfigError(f.name, value, f"must be {word} {bound}")

    @classmethod
    def from_config(cls, node):
        """This section from a ConfigDict node (missing fields take their defaults)."""
        return _build(cls, node, "")


# --- the sections ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LoraSection(Section):
    rank: int = F(0, "LoRA adapter rank; 0 = full fine-tuning (every parameter trained, as the releases do)", ge=0)
    alpha: float = F(16.0, "adapters are scaled by alpha / rank (PEFT's lora_alpha)", gt=0)
    targets: tuple = F(("q", "k", "v", "o", "gate", "up", "down"),
                       "projections that get adapters: any of q, k, v, o, gate, up, down (models.lora.TARGETS)")
    base_dtype: Literal["bfloat16", "float32", "int8", "nf4"] = F(
        "bfloat16", "with rank > 0, how the frozen base is stored: bfloat16 | float32 | int8 | nf4 (QLoRA; "
                    "blocks of 64, dequantized per layer inside the layer scan)")

    def __post_init__(self):
        super().__post_init__()
        allowed = _lora_targets()
        if not self.targets or any(t not in allowed for t in self.targets) or len(set(self.targets)) < len(
                self.targets):
            raise ConfigError("targets", self.targets, f"expected a non-empty subset of {allowed}")


@dataclasses.dataclass(frozen=True)
class ModelSection(Section):
    init: Literal["hf", "random"] = F("hf", "hf: load model.path (a HuggingFace folder) | random: a fresh model")
    path: str = F("", "HuggingFace folder (config.json, *.safetensors, tokenizer files)")
    preset: str = F("", "init=random: a preset of models.qwen2.PRESETS or custom (sizes from model.custom)")
    custom: dict = F(dict(vocab_size=0, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16, tie_word_embeddings=True),
                     "preset=custom: Qwen2Config sizes (vocab_size 0 = the tokenizer's)")
    rope_theta: float = F(0.0, "> 0 overrides the checkpoint's RoPE theta (the OXA release trains with 1e6)", ge=0)
    max_position_embeddings: int = F(0, "> 0 overrides the checkpoint's (the OXA release uses 40000)", ge=0)
    dtype: Literal["bfloat16", "float32"] = F("bfloat16", "compute dtype")
    param_dtype: Literal["float32", "bfloat16"] = F("float32", "stored parameters and optimizer state")
    remat_policy: str = F("full", "what the scanned layers keep: none | full | dots | dots_saveable "
                                  "(models.qwen2.REMAT_POLICIES)", choices=_remat_policies)
    scan_unroll: int = F(1, "layers per iteration of the layer scan; >= num_layers unrolls it (the CPU recipe's "
                            "small models: up to ~10% faster steps; large models keep 1, the compile grows with it)",
                         ge=1)
    attention: str = F("auto", "auto (splash on TPU, cuDNN / Pallas flash on GPU, blockwise elsewhere) or a "
                               "backend of models.attention.BACKENDS", choices=_attention_backends)
    lora: LoraSection = F(LoraSection(), "LoRA / QLoRA adapters (rank 0: off)")

    @staticmethod
    def preset_choices() -> tuple:
        """What model.preset may be with init=random."""
        return _presets()


@dataclasses.dataclass(frozen=True)
class TokenizerSection(Section):
    path: str = F("", "tokenizer folder; default: model.path")
    train_bpe_vocab: int = F(0, "> 0: train an offline byte-level BPE of this size on the data (tiny runs)", ge=0)


@dataclasses.dataclass(frozen=True)
class DataSection(Section):
    train_files: tuple = F((), "JSONL / JSON / Parquet files; see README 'Data formats'")
    format: str = F("auto", "record format of the files: auto | sft | alpaca | messages (data.records.FORMATS)",
                    choices=_data_formats)
    synthetic: Literal["", "arithmetic"] = F("", "'arithmetic': generate the toy verifiable task instead of files")
    synthetic_size: int = F(512, "records per loss type for data.synthetic", ge=1)
    synthetic_digits: int = F(2, "operand digits of the synthetic additions", ge=1)
    synthetic_bug_rate: float = F(0.0, "fraction of CE solutions that drop their carries (a flawed base corpus)",
                                  ge=0, le=1)
    max_length: int = F(4096, "tokens per sequence (prompt + response)", ge=1)
    overlong: Literal["drop", "truncate"] = F("drop", "examples over max_length (drop: the releases' behaviour)")
    max_prompt_length: int = F(0, "> 0: drop examples whose prompt is longer (tokens; CurioSFT release: 1024)", ge=0)
    max_response_length: int = F(0, "> 0: cut responses to this many tokens (CurioSFT release: 8192)", ge=0)
    chat_template: bool = F(True, "render prompt / response with the tokenizer's chat template")
    system_prompt: str = F("", "'' / 'default': the template's own system turn | 'none': no system turn | a text")
    prompt_suffix: str = F("", "appended to every prompt (and a message list's last turn) unless already there")
    # none: one example per row, padded (the releases' batches) | examples: the same examples per step packed
    # first-fit-decreasing into rows of batch.rows_per_micro (CE and UL never share a row) | tokens: a fixed token
    # budget of full rows per step. False / True from older configs mean none / tokens.
    packing: str | bool = F("none", "several examples per row as segments: none | examples | tokens (False / "
                                    "True from older configs: none / tokens)",
                            choices=lambda: (*PACKING_MODES, False, True))
    num_workers: int = F(0, "grain worker processes (0 = in-process)", ge=0)
    shuffle: bool = F(True, "shuffle the examples every epoch")


@dataclasses.dataclass(frozen=True)
class BatchSection(Section):
    global_size: int = F(128, "sequences per optimizer step (oxa: the CE sequences)", ge=1)
    ul_size: int = F(128, "oxa only: UL (negative) sequences per step on top of global_size (0: CE only)", ge=0)
    micro_batches: int = F(1, "gradient accumulation steps inside one jitted step (lax.scan)", ge=1)
    rows_per_micro: int = F(0, "rows per micro-batch; 0 = the step's rows / micro_batches (free with packing "
                               "'examples'); a multiple of the data-parallel devices", ge=0)


@dataclasses.dataclass(frozen=True)
class OptimSection(Section):
    lr: float = F(1e-5, "peak learning rate", gt=0)
    schedule: Literal["cosine", "constant"] = F("cosine", "cosine: linear warm-up, cosine decay | constant")
    warmup_ratio: float = F(0.03, "warm-up as a fraction of total steps (ignored when warmup_steps > 0)", ge=0, lt=1)
    warmup_steps: int = F(0, "warm-up steps (> 0 replaces warmup_ratio)", ge=0)
    min_lr_ratio: float = F(0.0, "cosine floor as a fraction of lr", ge=0, le=1)
    cosine_horizon_factor: float = F(1.0, "the cosine decays over this many run lengths (CurioSFT release: 4)", gt=0)
    b1: float = F(0.9, "Adam beta1", ge=0, lt=1)
    b2: float = F(0.95, "Adam beta2", ge=0, lt=1)
    eps: float = F(1e-8, "Adam epsilon", gt=0)
    weight_decay: float = F(0.1, "decoupled weight decay on matrices only (not norms, biases)", ge=0)
    clip_norm: float = F(1.0, "global-norm gradient clipping; <= 0 disables")
    mu_dtype: Literal["float32", "bfloat16"] = F(
        "float32", "Adam first moment's storage dtype: bfloat16 halves it (updated and applied in float32, rounded "
                   "to bfloat16 when stored; keep b1 <= 0.99)")
    second_moment: Literal["full", "factored"] = F(
        "full", "Adam second moment: full (one per parameter: AdamW) | factored (Adafactor's rank-1 row x column "
                "estimate on leaves whose two largest dims are >= factor_min_dim, bias-corrected like Adam's; "
                "rows + columns instead of rows x columns; other leaves stay full; with b1=0 no first moment is "
                "stored either: Adafactor without momentum)")
    factor_min_dim: int = F(128, "second_moment=factored: factor a leaf only when its two largest dims are at least "
                                 "this", ge=1)
    epochs: float = F(1.0, "total steps = epochs * examples / global_size, unless num_steps > 0", ge=0)
    num_steps: int = F(0, "> 0: total optimizer steps (GRPO: iterations)", ge=0)
    max_steps_per_run: int = F(0, "stop this invocation after this many steps (0: run to the end); the same "
                                  "command resumes", ge=0)


@dataclasses.dataclass(frozen=True)
class SFTOptions(Section):
    """`loss.sft_normalization` as the SFT step's option: token = mean over the step's counted tokens | sample =
    each example's token mean, averaged over the step's examples (OXA's CE term)."""

    normalization: Literal["token", "sample"] = F("token", "token | sample")


@dataclasses.dataclass(frozen=True)
class OXAOptions(Section):
    """`loss.oxa`: the unlikelihood term and the CE examples' weights."""

    ul_weight: float = F(1e-4, "weight of the unlikelihood term (release: 1e-4; 0: OXA-MLE)", ge=0)
    eps: float = F(1e-6, "epsilon inside log(1 - p + eps)", gt=0)
    sample_weighting: Literal["none", "data", "perplexity"] = F(
        "none", "per-example CE weights: none | data (the records' 'weight') | perplexity (ppl^alpha, normalised "
                "over the step's CE examples)")
    weight_alpha: float = F(1.0, "sample_weighting=perplexity: the exponent alpha")


@dataclasses.dataclass(frozen=True)
class CurioOptions(Section):
    """`loss.curio`: self-distillation toward a lagged (or live) copy tempered per token by its entropy."""

    coef: float = F(1.0, "weight of the self-distillation term", ge=0)
    divergence: str = F("k2", "k2 (released: 0.5 (log pi(y) - log pi_tilde(y))^2 at the label) | forward_kl "
                              "(KL(pi_tilde || pi)) | reverse_kl (KL(pi || pi_tilde)), full vocabulary, per token",
                        choices=_curio_divergences)
    teacher: Literal["lagged", "live"] = F("lagged", "lagged: EMA copy mixed every sync_every steps | live: the "
                                                     "detached student")
    sync_every: int = F(5, "steps between teacher mixes", ge=1)
    alpha: float = F(0.99, "mix phi <- (1 - alpha) phi + alpha theta", gt=0, le=1)
    fixed_tau: float = F(0.0, "> 0: one temperature for every token instead of the entropy map", ge=0)
    tau_min: float = F(1.1, "lowest per-token temperature", gt=0)
    tau_max: float = F(1.5, "highest per-token temperature", gt=0)
    pivot: float = F(1.2, "temperature map: the pivot", gt=0)
    slope: float = F(2.0, "temperature map: the slope")
    max_increase: float = F(0.5, "temperature map: the largest entropy increase targeted", ge=0)
    top_k: int = F(512, "logits kept when solving for the temperature", ge=1)
    iters: int = F(20, "bisection iterations of the temperature solve", ge=1)
    floor: float = F(0.03, "entropy floor (nats) below which a token is not tempered", ge=0)

    TAU_FIELDS: typing.ClassVar[tuple] = ("tau_min", "tau_max", "pivot", "slope", "max_increase", "top_k", "iters",
                                          "floor")

    def __post_init__(self):
        super().__post_init__()
        if self.tau_min > self.tau_max:
            raise ConfigError("tau_min", self.tau_min, f"must be <= tau_max={self.tau_max}")

    @property
    def tau_kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.TAU_FIELDS}


@dataclasses.dataclass(frozen=True)
class EntropyRegOptions(Section):
    """`loss.entropy_reg`: an entropy bonus on the highest-entropy tokens of the step."""

    coef: float = F(0.01, "entropy bonus coefficient")
    top_fraction: float = F(1.0, "share of the step's tokens (highest entropy first) the bonus covers", gt=0, le=1)


@dataclasses.dataclass(frozen=True)
class LossSection(Section):
    chunk_size: int = F(1024, "sequence positions per chunk of the memory-light head", ge=1)
    vocab_chunk_size: int = F(8192, "vocabulary rows per tile of the memory-light head", ge=1)
    sft_normalization: Literal["token", "sample"] = F(SFTOptions.normalization, SFTOptions.__doc__.split(":")[0])
    oxa: OXAOptions = F(OXAOptions(), "OXA's options")
    curio: CurioOptions = F(CurioOptions(), "CurioSFT's options")
    entropy_reg: EntropyRegOptions = F(EntropyRegOptions(), "entropy-regularised SFT's options")


@dataclasses.dataclass(frozen=True)
class GRPOSection(Section):
    prompt_files: tuple = F((), "JSONL / Parquet with {'prompt': str | messages, 'answer': str}")
    prompts_per_step: int = F(64, "P prompts per iteration", ge=1)
    group_size: int = F(8, "G completions per prompt (>= 2 for group-relative advantages)", ge=2)
    temperature: float = F(0.85, "rollout temperature (the trainer scores softmax(z / T) too)", gt=0)
    top_p: float = F(1.0, "rollout nucleus mass", gt=0, le=1)
    top_k: int = F(0, "rollout top-k (0: off)", ge=0)
    max_prompt_length: int = F(1024, "longer prompts are dropped (tokens)", ge=1)
    max_new_tokens: int = F(2048, "tokens per completion at most", ge=1)
    mini_batches: int = F(1, "optimizer steps per iteration (disjoint slices of the P*G rollouts)", ge=1)
    ppo_epochs: int = F(1, "passes over the rollouts; > 1 (or mini_batches > 1) recomputes old log-probs", ge=1)
    clip_low: float = F(0.2, "ppo_clip: lower ratio clip", ge=0)
    clip_high: float = F(0.2, "ppo_clip: upper ratio clip (> clip_low: DAPO's clip-higher)", ge=0)
    dual_clip: float = F(3.0, "> 1 enables the dual clip for negative advantages (0: off; verl's clip_ratio_c)")
    kl_coef: float = F(0.001, "KL to the frozen reference (0 disables the reference model)", ge=0)
    kl_estimator: str = F("k3", "KL estimator: k1 | k2 | k3 (losses.grpo.kl_penalty)", choices=_kl_estimators)
    aggregation: str = F("token-mean", "how token losses reduce to the batch loss (losses.grpo.aggregate)",
                         choices=_aggregations)
    policy_loss: str = F("ppo_clip", "ppo_clip | gspo (sequence-level ratio, Zheng et al. 2025) | cispo (clipped "
                                     "detached IS weight on log pi, MiniMax-M1)", choices=_policy_losses)
    gspo_clip_low: float = F(3e-4, "gspo: lower clip of the sequence ratio", gt=0, lt=1)
    gspo_clip_high: float = F(4e-4, "gspo: upper clip of the sequence ratio", gt=0)
    cispo_clip_low: float = F(1.0, "cispo: lower bound 1 - this on the IS weight (>= 1: none, as MiniMax)", ge=0)
    cispo_clip_high: float = F(4.0, "cispo: the IS weight is capped at 1 + this (TRL's recommended 5)", gt=0)
    rollout_correction: str = F("none", "sampler / trainer mismatch correction: none | token_truncate | token_mask "
                                        "| sequence_mask (TRL / verl)", choices=_rollout_corrections)
    rollout_correction_threshold: float = F(2.0, "the correction's cap C on exp(old_logp - sampler_logp)", ge=1)
    entropy_token_fraction: float = F(1.0, "< 1: the policy-gradient term only on this share of the highest-"
                                           "entropy response tokens (Wang et al. 2025: 0.2)", gt=0, le=1)
    advantage_scale: Literal["group", "batch", "none"] = F("group", "grpo estimator: group z-score | batch | none "
                                                                   "(Dr. GRPO)")
    advantage_estimator: str = F("grpo", "grpo (group-relative) | passk (Pass@k Training, Chen et al. 2025)",
                                 choices=_advantage_estimators)
    passk_k: int = F(4, "passk: the k of the group's pass@k (<= group_size)", ge=1)
    drop_zero_variance: bool = F(False, "DAPO dynamic sampling: resample prompts to replace all-equal groups")
    max_resample_rounds: int = F(3, "drop_zero_variance: resampling rounds at most", ge=0)
    overlong_filter: bool = F(False, "exclude truncated completions from the loss")
    overlong_penalty: bool = F(False, "DAPO's soft overlong punishment added to the reward")
    overlong_buffer: int = F(0, "the penalty's ramp length in tokens (0: max_new_tokens // 4)", ge=0)
    overlong_penalty_factor: float = F(1.0, "the penalty at max_new_tokens", ge=0)
    require_think_close: bool = F(False, "the answer must follow </think>")
    reward_timeout: float = F(5.0, "seconds per verification", gt=0)
    answer_extraction: str = F("boxed_only", "boxed_only: only the final \\boxed{} (the releases' RL reward) | "
                                             "standard | permissive", choices=_extraction_modes)
    sample_log_every: int = F(10, "write example completions every N iterations", ge=1)
    sampler_rows: int = F(256, "decode rows per sampler batch (memory knob)", ge=1)
    kv_pages: int = F(0, "> 0: the sampler keeps its KV cache in page pools of this many pages per batch device, "
                         "taken as rows grow (memory follows the tokens held, not sampler_rows x the longest row; "
                         "rows wait or are preempted when a pool runs short). scripts/fit.py --max-pages finds "
                         "the most that fit. 0: a dense cache per decode row", ge=0)
    page_size: int = F(16, f"kv_pages: cache entries per page (a power of two <= {MAX_PAGE_SIZE})", ge=1)
    offload_state: bool = F(True, "keep the train state and the KL reference in host memory (pinned_host) outside "
                                  "their phases: during rollouts the accelerator holds only the sampler's weights "
                                  "and KV cache (scripts/fit.py counts them as not resident then)")
    sft_warmup_steps: int = F(0, "random models only: SFT on the synthetic task first (toy runs)", ge=0)
    sft_warmup_lr: float = F(3e-3, "the warm-up's peak learning rate (cosine)", gt=0)
    sft_warmup_bug_rate: float = F(0.0, "fraction of warm-up solutions that drop carries", ge=0, le=1)
    lr: float = F(0.0, "> 0: GRPO's learning rate, replacing optim.lr", ge=0)
    system_prompt: str = F("", "as data.system_prompt")
    prompt_suffix: str = F("", "appended to every prompt (e.g. the boxed-answer instruction)")

    def __post_init__(self):
        super().__post_init__()
        if self.dual_clip and self.dual_clip <= 1:
            raise ConfigError("dual_clip", self.dual_clip, "must be 0 (off) or > 1")
        if self.page_size & (self.page_size - 1) or self.page_size > MAX_PAGE_SIZE:
            raise ConfigError("page_size", self.page_size, f"must be a power of two <= {MAX_PAGE_SIZE}")


@dataclasses.dataclass(frozen=True)
class MeshSection(Section):
    shape: tuple = F((1, -1, 1), "(data, fsdp, tensor); -1 = the remaining devices")
    targets: tuple = F((), "the accelerators this config is sized for, as scripts/fit.py names them (v5e-8, v5p-8, "
                           "h100, 8xh100, ...): fit.py --config X checks them all when no --topology is given, and "
                           "--table marks them")

    def __post_init__(self):
        super().__post_init__()
        if len(self.shape) != 3:
            raise ConfigError("shape", self.shape, "expected (data, fsdp, tensor)")


@dataclasses.dataclass(frozen=True)
class DistributedSection(Section):
    enabled: bool = F(False, "True: jax.distributed.initialize (auto-detects TPU pods / SLURM)")
    coordinator_address: str = F("", "host:port; also read from JAX_COORDINATOR_ADDRESS")
    num_processes: int = F(0, "processes in the job (0: auto-detected)", ge=0)
    process_id: int = F(-1, "this process (-1: auto-detected)")


@dataclasses.dataclass(frozen=True)
class CheckpointSection(Section):
    every_steps: int = F(200, "save interval in optimizer steps (also saved at the end)", ge=1)
    keep: int = F(3, "checkpoints kept", ge=1)
    async_save: bool = F(True, "array writes continue in the background")
    export_hf: bool = F(True, "write workdir/hf_export at the end")
    export_dtype: Literal["bfloat16", "float32"] = F("bfloat16", "dtype of the exported weights")


@dataclasses.dataclass(frozen=True)
class GuardSection(Section):
    max_consecutive_skips: int = F(5, "stop after this many non-finite steps in a row (0: off)", ge=0)
    loss_spike_factor: float = F(10.0, "stop when |loss| > factor x the running median |loss| (0: off; SFT-family "
                                       "runs only)", ge=0)
    spike_window: int = F(50, "finite steps in the running median", ge=1)
    spike_min_history: int = F(20, "steps seen before the spike check starts", ge=1)


@dataclasses.dataclass(frozen=True)
class LogSection(Section):
    every_steps: int = F(10, "log every N steps", ge=1)
    tensorboard: bool = F(True, "write tensorboard event files")
    plots: bool = F(True, "PNG loss / entropy curves in workdir at the end")
    peak_tflops: float = F(0.0, "per device, for MFU; 0 = known accelerators auto-detected", ge=0)


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
    # the registry of methods (train.objectives.OBJECTIVES) imports this schema: train.config.validate checks it
    method: str = F("sft", "what the run optimises: a method of train.objectives.OBJECTIVES")
    workdir: str = F("runs/default", "metrics.jsonl, tensorboard events, checkpoints/, config.json, hf_export/")
    seed: int = F(0, "parameter init (random models), the data order, sampling")
    model: ModelSection = F(ModelSection(), "the model")
    tokenizer: TokenizerSection = F(TokenizerSection(), "the tokenizer")
    data: DataSection = F(DataSection(), "the training data")
    batch: BatchSection = F(BatchSection(), "the step's batch")
    optim: OptimSection = F(OptimSection(), "the optimizer")
    loss: LossSection = F(LossSection(), "the loss")
    grpo: GRPOSection = F(GRPOSection(), "GRPO (method=grpo)")
    mesh: MeshSection = F(MeshSection(), "the device mesh")
    distributed: DistributedSection = F(DistributedSection(), "multi-host runs")
    checkpoint: CheckpointSection = F(CheckpointSection(), "checkpoints and export")
    guard: GuardSection = F(GuardSection(), "stopping a run that went wrong")
    log: LogSection = F(LogSection(), "logging")


# --- ConfigDict <-> schema --------------------------------------------------------------------------------------------

def _plain(value):
    if isinstance(value, ConfigDict):
        return value.to_dict()
    if isinstance(value, list):
        return tuple(value)
    return value


def _build(cls, node, prefix: str):
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if node is not None:
        for key in node.keys():
            if key not in names:
                raise ConfigError(f"{prefix}{key}", _plain(node[key]), "unknown config field")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if node is None or f.name not in node:
            continue  # a config written before the field existed: its default
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, node[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _plain(node[f.name])
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e.field}", e.value, e.why) from None


def parse(cfg: ConfigDict) -> RunConfig:
    """The typed `RunConfig` of `cfg`; raises `ValueError('config.<field>=<value>: <why>')` on the first unknown or
    invalid field."""
    try:
        return _build(RunConfig, cfg, "")
    except ConfigError as e:
        raise ValueError(f"config.{e}") from None


def to_config_dict(section) -> ConfigDict:
    """A schema section (or `RunConfig`) as a ConfigDict of plain values."""
    out = ConfigDict()
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        out[f.name] = to_config_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def default_config() -> ConfigDict:
    """Every field at its default: what configs/base.py's get_config() returns."""
    return to_config_dict(RunConfig())


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def complete(cfg: ConfigDict) -> ConfigDict:
    """Adds every field missing from `cfg` (written before the field existed) at its default, in place; returns
    `cfg`. Values already present are kept as they are."""

    def fill(node, section_cls):
        for f in dataclasses.fields(section_cls):
            tp = _hints(section_cls)[f.name]
            if f.name not in node:
                default = _default(f)
                node[f.name] = to_config_dict(default) if dataclasses.is_dataclass(default) else default
            elif dataclasses.is_dataclass(tp):
                fill(node[f.name], tp)

    locked = cfg.is_locked
    cfg.unlock()
    try:
        fill(cfg, RunConfig)
    finally:
        if locked:
            cfg.lock()
    return cfg


def fields_doc() -> list[tuple[str, str, str]]:
    """(dotted name, default, doc) of every field, for documentation."""
    out = []

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            tp = _hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            else:
                default = _default(f)
                out.append((prefix + f.name, repr(default), f.metadata["doc"]))

    walk(RunConfig, "")
    return out
