"""Qwen2 / Qwen2.5 / Qwen2.5-Math decoder in Flax NNX.

The module returns final hidden states, never logits: the vocabulary projection lives in the losses
(`exploresft_jax.losses.chunked_token_stats`) so no caller builds a [batch, seq, vocab] array by accident.
`Qwen2.head_weight()` gives the [V, D] projection (the embedding when tied).

Layer parameters are stacked along a leading `layers` axis and applied with `jax.lax.scan`, so the trace and
the compile cost do not grow with depth. Each parameter carries `logical_axes` metadata that
`exploresft_jax.sharding` maps to mesh axes.

Einsum letters: B batch, T query length, S key length (cache slots), D model width, N query heads,
K key/value heads, G = N // K query heads per KV head, H head dim, F MLP width, V vocabulary, L layers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from exploresft_jax import sharding as shd
from exploresft_jax.models import lora, paged_kv
from exploresft_jax.models.attention import attend, backend_choices, ragged_visibility
from exploresft_jax.models.lora import LoraSpec

REMAT_POLICIES = {
    "none": None,  # no rematerialisation: keep every activation (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs only
    "dots_saveable": jax.checkpoint_policies.checkpoint_dots,
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str | jnp.dtype) -> jnp.dtype:
    """Maps 'float32' | 'bfloat16' | 'float16' (or a dtype) to a jnp dtype; raises on anything else."""
    if not isinstance(name, str):
        return jnp.dtype(name)
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3's RoPE frequency scaling (`rope_type: llama3` in config.json): wavelengths longer than
    original_max_position_embeddings / low_freq_factor are divided by `factor`, those shorter than
    original / high_freq_factor kept, and the band between interpolated smoothly."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model family's config.json says and what its layers hold: `model_type` / `architecture` as
    transformers writes them, QKV projection biases (`attention_bias`), per-head RMSNorm of queries and keys
    before RoPE (`qk_norm`)."""

    model_type: str
    architecture: str
    attention_bias: bool
    qk_norm: bool


# Qwen2 / Qwen2.5 / Qwen2.5-Math, Qwen3 and Llama 3.x: one decoder, their differences as data
FAMILIES = {
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", attention_bias=True, qk_norm=False),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM", attention_bias=False, qk_norm=True),
    "llama": Family("llama", "LlamaForCausalLM", attention_bias=False, qk_norm=False),
}


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Architecture and numerics of a decoder of one of the FAMILIES (Qwen2, Qwen3, Llama 3). Frozen, so it can
    be a static jit argument.

    `family` selects the layer contents (QKV biases for qwen2, q/k RMSNorm for qwen3, neither for llama);
    `head_dim` is independent of hidden_size / num_heads (Qwen3); `rope_scaling` is Llama 3's frequency scaling
    (None: plain RoPE). `dtype` is the compute dtype (activations, matmul inputs); `param_dtype` the stored
    parameter dtype (of the adapters when `lora` is on: the frozen base is then stored in `lora.base_dtype`, see
    models/lora.py). Softmax, RMSNorm statistics, RoPE and logits are always computed in float32.
    """

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    head_dim: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    scan_unroll: int = 1  # layers per iteration of the layer scan (>= num_layers: no loop at all)
    attention: str = "auto"  # auto | splash | cudnn | blockwise | dense (see models/attention.py)
    family: str = "qwen2"
    rope_scaling: RopeScaling | None = None
    lora: LoraSpec | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}; expected one of {sorted(FAMILIES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.attention not in backend_choices():
            raise ValueError(f"attention={self.attention!r}; expected one of {backend_choices()}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {sorted(REMAT_POLICIES)}")
        if self.scan_unroll < 1:
            raise ValueError(f"scan_unroll={self.scan_unroll}; expected >= 1")
        dtype_of(self.dtype), dtype_of(self.param_dtype)

    def replace(self, **kw) -> Qwen2Config:
        return dataclasses.replace(self, **kw)

    @property
    def lora_spec(self) -> LoraSpec | None:
        """The LoRA settings when adapters are on (rank > 0), else None."""
        return self.lora if self.lora is not None and self.lora.enabled else None

    @property
    def base_param_dtype(self) -> str:
        """Stored dtype of the non-adapter parameters: param_dtype, or with LoRA the frozen base's (bfloat16 for
        norms and biases of a quantized base)."""
        spec = self.lora_spec
        if spec is None:
            return self.param_dtype
        return "bfloat16" if spec.quantized else spec.base_dtype

    @property
    def attention_bias(self) -> bool:
        return FAMILIES[self.family].attention_bias

    @property
    def qk_norm(self) -> bool:
        return FAMILIES[self.family].qk_norm

    @property
    def num_params(self) -> int:
        d, f, v, h = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        attn = d * h * (self.num_heads + 2 * self.num_kv_heads) + self.num_heads * h * d
        if self.attention_bias:
            attn += h * (self.num_heads + 2 * self.num_kv_heads)
        if self.qk_norm:
            attn += 2 * h
        per_layer = attn + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * per_layer + d

    # --- HuggingFace config.json --------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | str | Path, **overrides) -> Qwen2Config:
        """Reads a transformers Qwen2 / Qwen3 / Llama config (a dict, a config.json path or a model folder).

        The family comes from `model_type` (else `architectures`). Accepts both the 4.x form (top-level
        `rope_theta`, `rope_scaling`) and the 5.x form (`rope_parameters`); RoPE is plain or Llama 3's scaling.
        """
        source = "config"
        if not isinstance(config, Mapping):
            path = Path(config)
            path = path / "config.json" if path.is_dir() else path
            source = str(path)
            try:
                config = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{source}: cannot read a JSON config ({e})") from None
        c = dict(config)
        family = _family_of(c)
        if family is None:
            raise ValueError(f"{source}: model_type={c.get('model_type')!r} is not supported (supported: "
                             f"{', '.join(sorted(FAMILIES))})")
        spec = FAMILIES[family]
        rope = dict(c.get("rope_scaling") or {})
        rope.update(c.get("rope_parameters") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling = None
        if rope_type == "llama3":
            scaling = RopeScaling(factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                                  high_freq_factor=float(rope["high_freq_factor"]),
                                  original_max_position_embeddings=int(rope["original_max_position_embeddings"]))
        elif rope_type != "default":
            raise ValueError(f"{source}: rope_type={rope_type!r} is not supported ('default' or 'llama3' RoPE)")
        theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
        if c.get("use_sliding_window", False):
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        if bool(c.get("attention_bias", spec.attention_bias)) != spec.attention_bias:
            raise ValueError(f"{source}: attention_bias={c.get('attention_bias')} is not supported for {family} "
                             f"(expected {spec.attention_bias})")
        if c.get("mlp_bias", False):
            raise ValueError(f"{source}: mlp_bias=true is not supported")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in c]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        num_heads = int(c["num_attention_heads"])
        kw = dict(
            vocab_size=int(c["vocab_size"]),
            hidden_size=int(c["hidden_size"]),
            intermediate_size=int(c["intermediate_size"]),
            num_layers=int(c["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(c.get("num_key_value_heads") or num_heads),
            head_dim=int(c.get("head_dim") or int(c["hidden_size"]) // num_heads),
            rope_theta=float(theta),
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            max_position_embeddings=int(c.get("max_position_embeddings", 4096)),
            initializer_range=float(c.get("initializer_range", 0.02)),
            family=family,
            rope_scaling=scaling,
        )
        checkpoint_dtype = c.get("dtype") or c.get("torch_dtype")
        if checkpoint_dtype in _DTYPES:
            kw["dtype"] = checkpoint_dtype
        kw.update(overrides)
        return cls(**kw)

    def to_hf_config(self, torch_dtype: str = "bfloat16") -> dict:
        """A transformers-loadable config.json dict of this family (with both rope forms for 4.x and 5.x)."""
        spec = FAMILIES[self.family]
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope = {"rope_type": "llama3", "rope_theta": self.rope_theta, **dataclasses.asdict(self.rope_scaling)}
        out = {
            "architectures": [spec.architecture],
            "model_type": spec.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": True,
            "attention_dropout": 0.0,
            "dtype": torch_dtype,
        }
        if self.family != "qwen2":
            out.update(attention_bias=spec.attention_bias, mlp_bias=False)
        if self.family != "llama":
            out["use_sliding_window"] = False
        if self.rope_scaling is not None:
            out["rope_scaling"] = rope
        return out


def _family_of(c: Mapping[str, Any]) -> str | None:
    """The family of a config.json dict: its model_type, else its architectures, else qwen2 (None when the
    model_type is not supported)."""
    by_architecture = {spec.architecture: name for name, spec in FAMILIES.items()}
    model_type = c.get("model_type") or next(
        (by_architecture[a] for a in c.get("architectures") or () if a in by_architecture), "qwen2")
    return model_type if model_type in FAMILIES else None


def qwen2p5_math_1p5b(**overrides) -> Qwen2Config:
    """Qwen2.5-Math-1.5B (tied embeddings; 1.54 B parameters)."""
    return Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                       num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, max_position_embeddings=4096).replace(**overrides)


def qwen2p5_math_7b(**overrides) -> Qwen2Config:
    """Qwen2.5-Math-7B (untied embeddings; 7.6 B parameters)."""
    return Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                       num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, max_position_embeddings=4096).replace(**overrides)


def qwen3_1p7b(**overrides) -> Qwen2Config:
    """Qwen3-1.7B (tied embeddings, q/k norms, no QKV bias; 1.7 B parameters)."""
    return Qwen2Config(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16,
                       num_kv_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       max_position_embeddings=40960, family="qwen3").replace(**overrides)


def qwen3_4b(**overrides) -> Qwen2Config:
    """Qwen3-4B / Qwen3-4B-Base (tied embeddings, q/k norms, no QKV bias; 4.0 B parameters)."""
    return Qwen2Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32,
                       num_kv_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       max_position_embeddings=40960, family="qwen3").replace(**overrides)


def llama3p2_3b(**overrides) -> Qwen2Config:
    """Llama-3.2-3B (tied embeddings, llama3 RoPE scaling x32; 3.2 B parameters)."""
    return Qwen2Config(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24,
                       num_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, max_position_embeddings=131072, family="llama",
                       rope_scaling=RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                                original_max_position_embeddings=8192)).replace(**overrides)


def llama3p1_8b(**overrides) -> Qwen2Config:
    """Llama-3.1-8B / -Instruct (untied embeddings, llama3 RoPE scaling x8; 8.0 B parameters)."""
    return Qwen2Config(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                       num_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, max_position_embeddings=131072, family="llama",
                       rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                                original_max_position_embeddings=8192)).replace(**overrides)


PRESETS = {"qwen2p5_math_1p5b": qwen2p5_math_1p5b, "qwen2p5_math_7b": qwen2p5_math_7b, "qwen3_1p7b": qwen3_1p7b,
           "qwen3_4b": qwen3_4b, "llama3p2_3b": llama3p2_3b, "llama3p1_8b": llama3p1_8b}


# --- KV cache -------------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Dense per-layer key/value cache.

    k, v:  [L, B, K, S, H] in the cache dtype (bf16 by default for sampling). Heads before slots: a decode
           step's attention then contracts contiguous [S, H] blocks per (row, head) with no transpose, and the
           whole stack is carried through the layer scan and updated in place (one slot per layer per step)
           instead of being re-stacked as scan outputs; measured faster per decode step on CPU.
    valid: [B, S] bool, True on slots that hold a real token (False on left padding and unwritten slots).
    index: [] int32, the slot where the next call writes its first token (shared by all rows: prompts are
           left-padded to a common length, so every row's next token goes to the same slot).
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array

    # Logical axes of k / v: rows over the batch devices and KV heads over the tensor axis, so that with tensor
    # parallel sampling rules (batch over data x fsdp) a chip holds 1 / (batch devices x tensor) of the cache,
    # its physical share, instead of a copy replicated over the tensor axis.
    AXES = (None, "act_batch", "kv_heads", None, None)

    @classmethod
    def zeros(cls, cfg: Qwen2Config, batch: int, max_len: int, dtype=jnp.bfloat16) -> KVCache:
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))


# --- Pure building blocks -------------------------------------------------------------------------------------
def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm with float32 statistics, cast back to x's dtype before the weight (as transformers does)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * y.astype(x.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> jax.Array:
    """[H/2] float32 inverse frequencies theta^(-2i/H), with Llama 3's scaling when given."""
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv_freq = 1.0 / (theta ** exponent)
    if scaling is None:
        return inv_freq
    old = float(scaling.original_max_position_embeddings)
    low_wavelen, high_wavelen = old / scaling.low_freq_factor, old / scaling.high_freq_factor
    wavelen = 2 * jnp.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)  # long waves: interpolated
    smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return jnp.where(medium, blended, scaled)


def rope_tables(positions: jax.Array, head_dim: int, theta: float,
                scaling: RopeScaling | None = None) -> tuple[jax.Array, jax.Array]:
    """cos, sin tables for rotate-half RoPE. positions: [B, T] int -> two [B, T, H] float32 arrays."""
    inv_freq = rope_frequencies(head_dim, theta, scaling)  # [H/2], fp32
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, heads, H]; cos/sin: [B, T, H] fp32. Rotation in float32, result in x's dtype."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


def _project_qkv(p: Mapping[str, jax.Array], h: jax.Array, cos, sin,
                 cfg: Qwen2Config) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Query/key/value projections of the normed stream h: [B, T, D] (plus biases when the family has them,
    then per-head RMSNorm of q and k when it has that), RoPE applied to q and k.

    Returns q: [B, T, N, H], k, v: [B, T, K, H], all in h's dtype.
    """
    dt = h.dtype
    q, k, v = (_project(p, t, h, cfg) for t in ("q", "k", "v"))
    if cfg.attention_bias:
        q, k, v = q + p["q_bias"].astype(dt), k + p["k_bias"].astype(dt), v + p["v_bias"].astype(dt)
    if cfg.qk_norm:
        q, k = rms_norm(q, p["q_norm"], cfg.rms_norm_eps), rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    q = shd.constrain(apply_rope(q, cos, sin), ("act_batch", "act_seq", "act_heads", None))
    return q, apply_rope(k, cos, sin), v


def _project(p: Mapping[str, jax.Array], target: str, x: jax.Array, cfg: Qwen2Config,
             flat_input: bool = False) -> jax.Array:
    """One layer's projection `target` (q, k, v, o, gate, up, down; models/lora.py PROJECTIONS) of x in its dtype:
    the (dequantized) kernel, plus the LoRA adapter when the target has one (flat_input: see `lora.apply`)."""
    kernel = lora.weight(p, lora.PROJECTIONS[target].kernel, cfg.lora_spec, x.dtype)
    return lora.apply(p, target, x, cfg.lora_spec, kernel, flat_input)


def _mlp(p: Mapping[str, jax.Array], x: jax.Array, cfg: Qwen2Config) -> jax.Array:
    """The SwiGLU block with its residual: x + down(silu(gate(h)) * up(h)), h = post-attention RMSNorm(x)."""
    h = rms_norm(x, p["post_attn_norm"], cfg.rms_norm_eps)
    gate, up = _project(p, "gate", h, cfg), _project(p, "up", h, cfg)
    act = shd.constrain(jax.nn.silu(gate) * up, ("act_batch", "act_seq", "act_mlp"))
    x = x + _project(p, "down", act, cfg)
    return shd.constrain(x, ("act_batch", "act_seq", "act_embed"))


AttendFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


def _layer(p: Mapping[str, jax.Array], x: jax.Array, cos, sin, cfg: Qwen2Config, attend_fn: AttendFn,
           flat_o: bool = False):
    """One decoder layer on the residual stream x: [B, T, D] (compute dtype).

    attend_fn(q, k, v) -> (attended [B, T, N, H], aux) is where the forward and the cached paths differ
    (`_self_attention`, `_cached_attention`); aux (e.g. the updated cache) is returned unchanged. flat_o:
    contract the attention output with a flattened o kernel (`lora.apply`'s flat_input; no per-step copy of the
    kernel on CPU), set by the decode paths on per-layer weights only (`Qwen2._decode_layers`): the TPU compiler
    reads a stacked o kernel's slice in place through the einsum but copies it through the reshape.
    Returns (x, aux).
    """
    with jax.named_scope("attention"):
        h = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
        q, k, v = _project_qkv(p, h, cos, sin, cfg)
        a, aux = attend_fn(q, k, v)
        x = x + _project(p, "o", a.astype(x.dtype), cfg, flat_input=flat_o)
        x = shd.constrain(x, ("act_batch", "act_seq", "act_embed"))
    with jax.named_scope("mlp"):
        x = _mlp(p, x, cfg)
    return x, aux


def _self_attention(vis: dict, cfg: Qwen2Config) -> AttendFn:
    """Attention over the layer's own fresh keys/values (training, scoring). aux is None."""
    return lambda q, k, v: (attend(q, k, v, backend=cfg.attention, **vis), None)


def _cached_attention(vis: dict, cfg: Qwen2Config, kv: tuple[jax.Array, jax.Array], layer: jax.Array,
                      write_at: jax.Array, fresh_keys: bool) -> AttendFn:
    """Writes the T new keys/values at slot `write_at` of layer `layer` of kv = (k_cache, v_cache), the whole
    [L, B, K, S, H] stack, then attends over the fresh keys (`fresh_keys`: a prefill into an empty cache, so the
    same long-context backends as training apply) or over that layer's cache (decode). aux is the new kv."""

    def attend_fn(q, k, v):
        k_all, v_all = kv
        start = (layer, 0, 0, write_at, 0)
        k_all = jax.lax.dynamic_update_slice(k_all, k.transpose(0, 2, 1, 3).astype(k_all.dtype)[None], start)
        v_all = jax.lax.dynamic_update_slice(v_all, v.transpose(0, 2, 1, 3).astype(v_all.dtype)[None], start)
        if fresh_keys:
            a = attend(q, k, v, backend=cfg.attention, **vis)
        else:
            a = attend(q, jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False),
                       jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False), backend=cfg.attention,
                       kv_layout="BKSH", **vis)
        return a, (k_all, v_all)

    return attend_fn


def _token_valid(tokens: jax.Array, attn_mask: jax.Array | None) -> jax.Array:
    """[B, T] bool: True on real tokens (all of them without a mask)."""
    return jnp.ones(tokens.shape, bool) if attn_mask is None else attn_mask.astype(bool)


def _token_visibility(valid: jax.Array, segment_ids: jax.Array | None) -> dict:
    """`attention.attend` visibility among the T tokens themselves: causal within a segment, 0 = padding."""
    if segment_ids is None:
        seg = valid.astype(jnp.int32)
    else:
        seg = jnp.where(valid, segment_ids.astype(jnp.int32), 0)
    return dict(q_segment=seg, kv_segment=seg, packed=segment_ids is not None)


def _cache_visibility(kv_valid: jax.Array, write_at: jax.Array, t: int) -> dict:
    """`attention.attend` visibility of T queries written at `write_at` over all S cache slots: every query sees
    the valid slots up to its own. kv_valid: [B, S] bool, the new tokens' slots included."""
    b, s = kv_valid.shape
    return dict(q_segment=jnp.ones((b, t), jnp.int32), kv_segment=kv_valid.astype(jnp.int32),
                q_pos=jnp.broadcast_to(write_at + jnp.arange(t, dtype=jnp.int32), (b, t)),
                kv_pos=jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s)), packed=False)


# --- NNX modules ------------------------------------------------------------------------------------------------
_INITS: dict[str, Callable[[nnx.Rngs | None, tuple, jnp.dtype, Qwen2Config], jax.Array]] = {
    "normal": lambda rngs, shape, dtype, cfg: cfg.initializer_range * jax.random.normal(rngs.params(), shape,
                                                                                         dtype),
    "zeros": lambda rngs, shape, dtype, cfg: jnp.zeros(shape, dtype),
    "ones": lambda rngs, shape, dtype, cfg: jnp.ones(shape, dtype),
}


def _param(rngs: nnx.Rngs | None, shape, axes, cfg: Qwen2Config, init: str = "normal") -> nnx.Param:
    """A parameter of `shape` in cfg.base_param_dtype (param_dtype, or a LoRA run's frozen base dtype),
    initialised by `init` (a key of _INITS), with logical axes."""
    if init not in _INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {sorted(_INITS)}")
    value = _INITS[init](rngs, tuple(shape), dtype_of(cfg.base_param_dtype), cfg)
    return nnx.Param(value, logical_axes=axes)


def _set_matrix(module: nnx.Module, name: str, rngs: nnx.Rngs, shape, axes, cfg: Qwen2Config) -> None:
    """Creates the weight matrix `name` on `module`: a plain parameter, or with a quantized LoRA base its codes
    (`name`) and block scales (`name`_scale), quantized from the same random initialisation."""
    spec = cfg.lora_spec
    if spec is None or not spec.quantized:
        setattr(module, name, _param(rngs, shape, axes, cfg))
        return
    codes, scale = lora.quantize(_INITS["normal"](rngs, tuple(shape), jnp.float32, cfg), spec.base_dtype)
    setattr(module, name, nnx.Param(codes, logical_axes=axes))
    setattr(module, f"{name}_scale", nnx.Param(scale, logical_axes=axes))


class DecoderLayers(nnx.Module):
    """All decoder layers, parameters stacked on a leading [L] axis (applied with lax.scan). With LoRA
    (`cfg.lora_spec`), each target also has `<t>_lora_a` [L, *in, r] and `<t>_lora_b` [L, r, *out] adapters
    (`lora.LoRAParam`), and a quantized base keeps `<kernel>_scale` beside each kernel's codes."""

    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        L, D, N, K, H, F = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                            cfg.intermediate_size)
        P = lambda shape, axes, init="normal": _param(rngs, (L, *shape), ("layers", *axes), cfg, init)  # noqa
        M = lambda name, shape, axes: _set_matrix(self, name, rngs, (L, *shape), ("layers", *axes), cfg)  # noqa
        self.param_names = self.names(cfg)
        self.input_norm = P((D,), ("norm",), "ones")
        M("q_kernel", (D, N, H), ("embed", "q_heads", "head_dim"))
        M("k_kernel", (D, K, H), ("embed", "kv_heads", "head_dim"))
        M("v_kernel", (D, K, H), ("embed", "kv_heads", "head_dim"))
        if cfg.attention_bias:
            self.q_bias = P((N, H), ("q_heads", "head_dim"), "zeros")
            self.k_bias = P((K, H), ("kv_heads", "head_dim"), "zeros")
            self.v_bias = P((K, H), ("kv_heads", "head_dim"), "zeros")
        if cfg.qk_norm:
            self.q_norm = P((H,), ("norm",), "ones")
            self.k_norm = P((H,), ("norm",), "ones")
        M("o_kernel", (N, H, D), ("q_heads", "head_dim", "embed"))
        self.post_attn_norm = P((D,), ("norm",), "ones")
        M("gate_kernel", (D, F), ("embed", "mlp"))
        M("up_kernel", (D, F), ("embed", "mlp"))
        M("down_kernel", (F, D), ("mlp", "embed"))
        spec = cfg.lora_spec
        if spec is not None:
            dims = dict(D=D, N=N, K=K, H=H, F=F)
            for i, t in enumerate(spec.targets):
                proj = lora.PROJECTIONS[t]
                shapes = lora.adapter_shapes(proj, dims, spec.rank)
                axes = (("layers", *proj.inp_axes, "lora_rank"), ("layers", "lora_rank", *proj.out_axes))
                key = rngs.params()
                for which, name, shape, ax in zip("ab", lora.adapter_names(t), shapes, axes):
                    value = lora.init_adapter(jax.random.fold_in(key, i), (L, *shape), which,
                                              dtype_of(cfg.param_dtype))
                    setattr(self, name, lora.LoRAParam(value, logical_axes=ax))
        self.stored_names = tuple(n for n in vars(self) if isinstance(getattr(self, n), nnx.Variable))

    @staticmethod
    def names(cfg: Qwen2Config) -> tuple[str, ...]:
        """The per-layer weights of cfg's family (as HuggingFace checkpoints hold them)."""
        out = ["input_norm", "q_kernel", "k_kernel", "v_kernel", "o_kernel", "post_attn_norm", "gate_kernel",
               "up_kernel", "down_kernel"]
        if cfg.attention_bias:
            out += ["q_bias", "k_bias", "v_bias"]
        if cfg.qk_norm:
            out += ["q_norm", "k_norm"]
        return tuple(out)

    def stacked(self) -> dict[str, jax.Array]:
        """Every stored per-layer array ([L, ...]): weights, quantization scales, adapters."""
        return {name: getattr(self, name)[...] for name in self.stored_names}

    def dense(self, name: str, cfg: Qwen2Config, merge: bool = True) -> jax.Array:
        """Weight `name` of every layer [L, ...] in float32: dequantized, plus its LoRA delta when `merge` and it
        is an adapted kernel (what a merged export writes)."""
        p = self.stacked()
        w = lora.weight(p, name, cfg.lora_spec, jnp.float32)
        t = lora.TARGET_OF_KERNEL.get(name)
        if merge and t is not None and f"{t}_lora_a" in p:
            a, b = (p[n] for n in lora.adapter_names(t))
            w = w + lora.delta(a, b, t, cfg.lora_spec)
        return w


class Qwen2(nnx.Module):
    """The decoder (Qwen2, Qwen3 or Llama 3, per `config.family`) returning final (normed) hidden states.

    `hidden = model.forward(tokens, positions, segment_ids=..., attn_mask=...)` (or `model(...)`, the same)
    for training and scoring; `hidden, cache = model.decode(tokens, positions, cache, attn_mask=...)` for the
    sampler's prefill and decode steps.
      tokens:      [B, T] int32 token ids.
      positions:   [B, T] int32 RoPE positions (per row, so left-padded prompts start at 0).
      segment_ids: [B, T] int32, optional (forward only): packed sequences; tokens attend only within their
                   segment.
      attn_mask:   [B, T] bool, optional: False on padding tokens (they are never attended to). In `forward`
                   without segment_ids, rows must be right-padded (tokens first) for the cudnn backend, which
                   then uses cuDNN's key lengths (a left-padded row gives NaN there); pass
                   segment_ids=attn_mask for left-padded rows.
      cache:       KVCache (decode): the T new tokens are written at `cache.index` and attend to all valid
                   earlier slots; the returned cache has index + T.
      cache_is_empty: static (decode); True on a prefill into an empty cache: attention then runs over the fresh
                   keys with the configured long-context backend instead of over all S cache slots.
    Returns hidden: [B, T, D] in the compute dtype.
    """

    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        self.config = cfg
        # embeddings and head stay unquantized with a QLoRA base (as QLoRA does): a quantized [V, D] head would be
        # dequantized whole for every loss chunk pass
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)
        self.layers = DecoderLayers(cfg, rngs=rngs)
        self.final_norm = _param(None, (cfg.hidden_size,), ("norm",), cfg, "ones")
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)

    def head_weight(self) -> jax.Array:
        """The output projection, [V, D] (the embedding matrix when tied), in the parameter dtype."""
        return self.embed[...] if self.config.tie_word_embeddings else self.lm_head[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Full logits [B, T, V] float32. For short inputs (sampling, tests); training uses the chunked head."""
        w = self.head_weight().astype(hidden.dtype)
        return jnp.einsum("BTD,VD->BTV", hidden, w, preferred_element_type=jnp.float32)

    def step_logits(self, hidden: jax.Array, head_t: jax.Array | None = None) -> jax.Array:
        """Logits [B, V] float32 of one decode step's hidden states [B, D] (the samplers' head).

        head_t: the head transposed, [D, V] (`DecodeWeights.head_t`, a sampler's copy); None: this model's [V, D]
        one. Why a transposed copy: at batch 1 the head is a matrix-vector product over the largest weight (most
        of a small model's bytes per step), and XLA's CPU dot streams a [D, V] matrix at about a fifth more bytes
        per second than it reduces the rows of a [V, D] one (a 32000 x 512 float32 head on this project's CPU
        hosts; `scripts/bench/sampler.py --roofline` times the whole decode both ways)."""
        if head_t is not None:
            return jnp.einsum("BD,DV->BV", hidden, head_t.astype(hidden.dtype), preferred_element_type=jnp.float32)
        w = self.head_weight().astype(hidden.dtype)
        return jnp.einsum("BD,VD->BV", hidden, w, preferred_element_type=jnp.float32)

    def forward(self, tokens, positions, *, segment_ids=None, attn_mask=None) -> jax.Array:
        """Hidden states [B, T, D] of a full sequence (training, scoring); see the class docstring."""
        cfg = self.config
        x = self._embed(tokens)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        vis = _token_visibility(_token_valid(tokens, attn_mask), segment_ids)
        attend_fn = _self_attention(vis, cfg)

        def body(y, p):
            y, _ = _layer(p, y, cos, sin, cfg, attend_fn)
            return y, None

        x, _ = self._scan_layers(body, x, self.layers.stacked())
        return self._final_norm(x)

    def __call__(self, tokens, positions, *, segment_ids=None, attn_mask=None) -> jax.Array:
        """The same as `forward`."""
        return self.forward(tokens, positions, segment_ids=segment_ids, attn_mask=attn_mask)

    def decode(self, tokens, positions, cache: KVCache, *, attn_mask=None, cache_is_empty: bool = False,
               layers: LayerParams | None = None) -> tuple[jax.Array, KVCache]:
        """(hidden [B, T, D], cache with index + T) for T new tokens written into `cache` at `cache.index` (a
        prefill with `cache_is_empty=True`, or decode steps); see the class docstring. `layers`: the layer
        weights as `unstack_layers` gives them (None: this model's stacked ones); see `_decode_layers`."""
        cfg = self.config
        t = tokens.shape[1]
        x = self._embed(tokens)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        valid = _token_valid(tokens, attn_mask)
        write_at = cache.index
        kv_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, valid, write_at, axis=1)
        if cache_is_empty:  # attend over the fresh keys, as training does
            # packed=True: prompts may be left-padded (the static sampler's), which cuDNN's key lengths cannot
            # express; segment ids 0 / 1 (the Triton kernel on a GPU) take either padding
            vis = dict(_token_visibility(valid, None), packed=True)
        else:  # attend over the cache
            vis = _cache_visibility(kv_valid, write_at, t)

        def body(carry, p, i):
            y, k_all, v_all = carry  # the cache rides in the carry, so each step updates it in place
            attend_fn = _cached_attention(vis, cfg, (k_all, v_all), layer=i, write_at=write_at,
                                          fresh_keys=cache_is_empty)
            y, (k_all, v_all) = _layer(p, y, cos, sin, cfg, attend_fn, flat_o=layers is not None)
            return y, k_all, v_all

        x, k_all, v_all = self._decode_layers(body, (x, cache.k, cache.v), layers)
        hidden = self._final_norm(x)
        return hidden, KVCache(k=k_all, v=v_all, valid=kv_valid, index=cache.index + t)

    def decode_ragged(self, tokens: jax.Array, lengths: jax.Array, write_at: jax.Array, k_all: jax.Array,
                      v_all: jax.Array, window: int, layers: LayerParams | None = None,
                      page_table: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One decode step in which every row has its own cache index (the continuous-batching sampler's step).

        tokens: [B] int32, fed at RoPE position `lengths` [B]; their K/V go to cache index `write_at` [B] (the same
        as `lengths` for live rows; an out-of-range index, e.g. the capacity, writes nothing). k_all, v_all:
        [L, B, K, C, H] (the cache, updated in the scan carry). Attention reads cache entries [0, window) of each
        row (`window` static) and sees the entries <= lengths. `layers`: as in `decode`.
        page_table: [B, W] int32: k_all / v_all are then per-device page pools [G, K, L, P, page_size, H]
        (`models.paged_kv`), row b's entry t on page page_table[b, t // page_size] of its group b // (B / G) (the
        batch device it runs on); `window` a multiple of page_size, at most
        W x page_size; a write_at of W x page_size or more writes nothing. Attention over the pages is
        `paged_kv.attend_pages`: the Pallas TPU paged-attention kernel for a TPU compile target (each row reads
        its own pages up to its length), the gather reference elsewhere. Returns (hidden [B, D], k_all, v_all).
        """
        cfg = self.config
        b = tokens.shape[0]
        x = self._embed(tokens[:, None])
        cos, sin = rope_tables(lengths[:, None].astype(jnp.int32), cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        vis = ragged_visibility(lengths, window)
        rows = jnp.arange(b)
        if page_table is not None:
            page_size = k_all.shape[-2]
            if window % page_size or window > page_table.shape[1] * page_size:
                raise ValueError(f"window={window} must be a multiple of the page size {page_size} and at most "
                                 f"{page_table.shape[1]} pages")
            live = write_at < page_table.shape[1] * page_size
            window_pages = page_table[:, :window // page_size]
            # rows writing nothing (finished slots) attend their entry 0 only: their outputs are unused, and their
            # stale lengths would make the kernel (and the reference's block loop) read pages for nothing
            seen = jnp.where(live, lengths, 0)

        def body(carry, p, i):
            y, kc, vc = carry

            def attend_paged(q, k, v):
                ka = paged_kv.write_token(kc, k[:, 0], page_table, write_at, live, layer=i)
                va = paged_kv.write_token(vc, v[:, 0], page_table, write_at, live, layer=i)
                out = paged_kv.attend_pages(q, ka, va, window_pages, seen, layer=i)
                return out, (ka, va)

            def attend_fn(q, k, v):
                ka = kc.at[i, rows, :, write_at].set(k[:, 0].astype(kc.dtype), mode="drop")
                va = vc.at[i, rows, :, write_at].set(v[:, 0].astype(vc.dtype), mode="drop")
                kl = jax.lax.dynamic_slice_in_dim(jax.lax.dynamic_index_in_dim(ka, i, 0, keepdims=False), 0, window,
                                                  2)
                vl = jax.lax.dynamic_slice_in_dim(jax.lax.dynamic_index_in_dim(va, i, 0, keepdims=False), 0, window,
                                                  2)
                return attend(q, kl, vl, backend=cfg.attention, kv_layout="BKSH", **vis), (ka, va)

            y, (kc, vc) = _layer(p, y, cos, sin, cfg, attend_fn if page_table is None else attend_paged,
                                 flat_o=layers is not None)
            return y, kc, vc

        x, k_all, v_all = self._decode_layers(body, (x, k_all, v_all), layers)
        return self._final_norm(x)[:, 0], k_all, v_all

    # --- shared pieces of forward and decode -------------------------------------------------------------------
    def _embed(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings [B, T, D] in the compute dtype."""
        with jax.named_scope("embed"):
            x = jnp.take(self.embed[...], tokens, axis=0).astype(dtype_of(self.config.dtype))
            return shd.constrain(x, ("act_batch", "act_seq", "act_embed"))

    def _scan_layers(self, body, carry, xs):
        """`lax.scan` of `body` over the stacked layers, rematerialised per the config's remat_policy, with
        `scan_unroll` layers per loop iteration. Why unroll: the backward pass of a rolled scan keeps each
        layer's residuals in [L, ...] buffers that are zero-filled and sliced every step, which an XLA:CPU op
        trace of the demo's small model shows as a visible share of its step (`scripts/bench/train_step.py`
        measures both forms). Large models keep 1 (the trace and compile grow with the unrolled depth)."""
        cfg = self.config
        if cfg.remat_policy != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
        return jax.lax.scan(body, carry, xs, unroll=cfg.scan_unroll)

    def _decode_layers(self, body, carry, layers: LayerParams | None):
        """carry after body(carry, p, i) over the layers (p: one layer's weights, i: its index), for the cached
        (sampling) paths.

        layers None: a `lax.scan` over this model's stacked [L, ...] weights (i traced). layers given (the
        per-layer weights of `unstack_layers`): the loop unrolled in Python (i a static int), each layer reading
        its own arrays. Why both: inside the scan every weight is a slice of its stacked array at a traced index.
        The TPU compiler fuses that dynamic slice into the matmul that reads it, but XLA's CPU and GPU compilers
        first copy each slice into its own buffer, on every decode step: on CPU about 40% more bytes written
        (and read again) than the weights themselves (a deviceless H100 compile of a 1.5B model copies the MLP
        kernels' slices the same way). Unrolling over a stacked array does not help (a static slice is copied
        too); separate per-layer arrays are read in place. On TPU the per-layer arrays are the worse choice (the
        compiler moves them between memory spaces), hence `Sampler(unstack_layers=None)`: off there. The
        unrolled trace and compile grow with depth (28 layers on CPU: about 8 s instead of 2 s per decode
        program), which only the sampling programs pay (training keeps the scan).
        """
        if layers is None:
            def scan_body(c, xs):
                return body(c, *xs), None

            carry, _ = self._scan_layers(scan_body, carry, (self.layers.stacked(), jnp.arange(self.config.num_layers)))
            return carry
        if len(layers) != self.config.num_layers:
            raise ValueError(f"{len(layers)} layers given; the model has {self.config.num_layers}")
        for i, p in enumerate(layers):
            carry = body(carry, p, i)
        return carry

    def _final_norm(self, x: jax.Array) -> jax.Array:
        with jax.named_scope("final_norm"):
            return rms_norm(x, self.final_norm[...], self.config.rms_norm_eps)


# --- Per-layer weights for the sampling paths --------------------------------------------------------------------
LayerParams = tuple  # of per-layer dicts {name: array without the [L] axis}, as `unstack_layers` gives them


def unstack_layers(layers_state: Mapping[str, Any], cfg: Qwen2Config) -> LayerParams:
    """The stacked layer weights (`DecoderLayers`' state: `nnx.split(model)[1]["layers"]`, or a dict of [L, ...]
    arrays) as one dict per layer, for `Qwen2.decode` / `decode_ragged` (see `_decode_layers` for why).

    Floating-point weights come out in the compute dtype (cfg.dtype), except quantization scales: every use in a
    layer casts them to it first, so decoding gives the same numbers while each step reads the smaller array
    once (no per-step cast of a float32 copy). Call it under jit: each output is a new array (a copy)."""
    stacked = {k: (v[...] if isinstance(v, nnx.Variable) else v) for k, v in layers_state.items()}
    dt = dtype_of(cfg.dtype)

    def one(name, w):
        keep = name.endswith("_scale") or not jnp.issubdtype(w.dtype, jnp.floating)
        return w if keep else w.astype(dt)

    return tuple({k: one(k, w[i]) for k, w in stacked.items()} for i in range(cfg.num_layers))


class DecodeWeights(NamedTuple):
    """A sampler's own copies of weights, laid out for the decode paths; a None field: those paths read the
    model's own weights instead.

    layers: the layer weights as `unstack_layers` gives them (`Qwen2.decode` / `decode_ragged`'s `layers`; see
      `Qwen2._decode_layers` for why).
    head_t: the output projection transposed, [D, V] in the compute dtype (`Qwen2.step_logits`' `head_t`; see
      there for why).
    """
    layers: LayerParams | None = None
    head_t: jax.Array | None = None


def decode_weights(model: Qwen2, *, layers: bool, head: bool) -> DecodeWeights:
    """The copies of `DecodeWeights` that are asked for (`layers`, `head`) of `model`'s weights. Call it under
    jit: each is a new array."""
    cfg = model.config
    return DecodeWeights(layers=unstack_layers(nnx.state(model.layers), cfg) if layers else None,
                         head_t=model.head_weight().astype(dtype_of(cfg.dtype)).T if head else None)


# --- Construction -----------------------------------------------------------------------------------------------
def abstract_model(cfg: Qwen2Config) -> Qwen2:
    """The model with ShapeDtypeStruct leaves (no memory allocated)."""
    return nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(0)))


def init_model(cfg: Qwen2Config, *, seed: int = 0, mesh=None, rules=None) -> Qwen2:
    """A randomly initialised model, created directly in its target shardings (never whole on one device).

    mesh/rules: a `jax.sharding.Mesh` and `sharding.ShardingRules`; without them, parameters live on the
    default device.
    """
    graphdef, abstract_state = nnx.split(abstract_model(cfg))

    def make():
        return nnx.split(Qwen2(cfg, rngs=nnx.Rngs(seed)))[1]

    out_shardings = None if mesh is None else shd.state_shardings(abstract_state, mesh, rules or shd.TRAIN_RULES)
    state = jax.jit(make, out_shardings=out_shardings)()
    return nnx.merge(graphdef, state)
