"""LoRA adapters on the decoder's stacked layers, and the frozen base stored quantized (QLoRA).

A projection W of a target (q, k, v, o, gate, up, down) becomes W x + (alpha / rank) B A x, with A: [in, rank]
and B: [rank, out] stacked over layers like W ([L, ...] leading axis, applied inside the same layer scan), A drawn
uniform(+-1 / sqrt(in)) and B zero, so a fresh adapter leaves the model unchanged (PEFT's initialisation and
scaling). Adapters are `LoRAParam`s: a run with `LoraSpec.rank > 0` trains those only
(`train.step.split_model`); every other parameter is the frozen base, stored in `LoraSpec.base_dtype`:

  * bfloat16 / float32: plain arrays;
  * int8: symmetric per block of 64 values (along the last axis): codes = round(127 w / absmax(block));
  * nf4: QLoRA's NormalFloat-4 levels (quantiles of a standard normal, scaled to [-1, 1]) per block of 64 values,
    two 4-bit codes per byte.

Quantized weights are an nnx.Param of codes (int8, or uint8 holding two nf4 codes, the last axis halved) plus
`<name>_scale` (float32 absmax per block, [..., last / block]); `dequantize` restores a weight in the compute
dtype, one layer at a time inside the scan, so the full-precision base never exists whole on the device.
Matrices quantized: every layer kernel (q, k, v, o, gate, up, down); the embedding, the untied head, norms and
biases stay in bfloat16 (as QLoRA leaves them: the [V, D] head would otherwise be dequantized whole for the loss).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
BASE_DTYPES = ("bfloat16", "float32", "int8", "nf4")
QUANTIZED = ("int8", "nf4")
BLOCK = 64  # values per quantization block (QLoRA's block size)


class LoRAParam(nnx.Param):
    """A trainable LoRA adapter matrix (the only parameters that get gradients when LoRA is on)."""


@dataclasses.dataclass(frozen=True)
class Projection:
    """A LoRA target: its stacked kernel, the einsum letters of its input and output dims (D model width, N / K
    query / key-value heads, H head dim, F MLP width), their logical sharding axes and the HF module it maps to."""

    kernel: str
    inp: str
    out: str
    inp_axes: tuple[str, ...]
    out_axes: tuple[str, ...]
    hf_module: str


PROJECTIONS = {
    "q": Projection("q_kernel", "D", "NH", ("embed",), ("q_heads", "head_dim"), "self_attn.q_proj"),
    "k": Projection("k_kernel", "D", "KH", ("embed",), ("kv_heads", "head_dim"), "self_attn.k_proj"),
    "v": Projection("v_kernel", "D", "KH", ("embed",), ("kv_heads", "head_dim"), "self_attn.v_proj"),
    "o": Projection("o_kernel", "NH", "D", ("q_heads", "head_dim"), ("embed",), "self_attn.o_proj"),
    "gate": Projection("gate_kernel", "D", "F", ("embed",), ("mlp",), "mlp.gate_proj"),
    "up": Projection("up_kernel", "D", "F", ("embed",), ("mlp",), "mlp.up_proj"),
    "down": Projection("down_kernel", "F", "D", ("mlp",), ("embed",), "mlp.down_proj"),
}
TARGET_OF_KERNEL = {p.kernel: t for t, p in PROJECTIONS.items()}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Static LoRA settings of a model (part of `Qwen2Config`, so hashable). rank 0 = no adapters (full
    fine-tuning; base_dtype is then ignored)."""

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    base_dtype: str = "bfloat16"

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"lora rank={self.rank} must be >= 0")
        bad = [t for t in self.targets if t not in PROJECTIONS]
        if bad or not self.targets:
            raise ValueError(f"lora targets={self.targets!r}; expected a non-empty subset of {TARGETS}")
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"lora base_dtype={self.base_dtype!r}; expected one of {BASE_DTYPES}")
        object.__setattr__(self, "targets", tuple(t for t in TARGETS if t in self.targets))  # canonical order

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        """alpha / rank: the adapter's output multiplier (PEFT's `scaling`)."""
        return self.alpha / self.rank

    @property
    def quantized(self) -> bool:
        return self.enabled and self.base_dtype in QUANTIZED


def adapter_names(target: str) -> tuple[str, str]:
    return f"{target}_lora_a", f"{target}_lora_b"


def adapter_shapes(p: Projection, dims: Mapping[str, int], rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(A shape, B shape) of one layer: A [*in, rank], B [rank, *out]."""
    return (*(dims[c] for c in p.inp), rank), (rank, *(dims[c] for c in p.out))


def init_adapter(key: jax.Array, shape: tuple[int, ...], which: str, dtype) -> jax.Array:
    """A ([L, *in, rank]): uniform(+-1/sqrt(in)), as PEFT's kaiming-uniform(a=sqrt(5)) gives; B: zeros."""
    if which == "b":
        return jnp.zeros(shape, dtype)
    bound = 1.0 / math.sqrt(math.prod(shape[1:-1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def apply(p: Mapping[str, jax.Array], target: str, x: jax.Array, spec: LoraSpec | None, kernel: jax.Array,
          flat_input: bool = False):
    """x @ kernel (+ scale * x @ A @ B when `target` has an adapter in `p`), for one layer. x: [B, T, *in] in the
    compute dtype; kernel: the (dequantized) [*in, *out] weight. Returns [B, T, *out] in x's dtype.

    flat_input: contract a multi-axis input (o's N, H) as one flattened axis, x reshaped to [B, T, N * H] and the
    kernel to [N * H, D] (a free reshape of a row-major weight). The same sum; what it changes is where a layout
    change lands: XLA's CPU compiler otherwise lays the two contracted axes out in the order the attention
    output comes in and transposes the [N, H, D] weight to match, a weight-sized copy per call, where this
    reshape moves the (small, in decode) activation instead. The decode paths set it on per-layer weights
    (`Qwen2._decode_layers`; on a slice of the stacked kernel the reshape is what makes the TPU compiler copy)."""
    proj = PROJECTIONS[target]
    inp = proj.inp
    name_a, name_b = adapter_names(target)
    a = p[name_a] if spec is not None and name_a in p else None
    if flat_input and len(inp) > 1:
        x = x.reshape(*x.shape[:2], -1)
        kernel = kernel.reshape(-1, *kernel.shape[len(inp):])
        a = None if a is None else a.reshape(-1, a.shape[-1])
        inp = "I"
    y = jnp.einsum(f"BT{inp},{inp}{proj.out}->BT{proj.out}", x, kernel.astype(x.dtype))
    if a is None:
        return y
    z = jnp.einsum(f"BT{inp},{inp}R->BTR", x, a.astype(x.dtype))
    return y + spec.scale * jnp.einsum(f"BTR,R{proj.out}->BT{proj.out}", z, p[name_b].astype(x.dtype))


def delta(a: jax.Array, b: jax.Array, target: str, spec: LoraSpec) -> jax.Array:
    """scale * A @ B as a kernel-shaped [..., *in, *out] float32 array (for merging); a, b with any leading axes."""
    proj = PROJECTIONS[target]
    return spec.scale * jnp.einsum(f"...{proj.inp}R,...R{proj.out}->...{proj.inp}{proj.out}",
                                   a.astype(jnp.float32), b.astype(jnp.float32))


# --- quantization ---------------------------------------------------------------------------------------------------
def nf4_levels() -> np.ndarray:
    """The 16 NormalFloat-4 levels of QLoRA (Dettmers et al. 2023): 8 positive and 7 negative quantiles of N(0, 1)
    taken at evenly spaced probabilities from 0.5 to 0.9677 (the tail offset (1 - 1/(2*15) + 1 - 1/(2*16)) / 2),
    exact zero, each side scaled to +-1."""
    offset = 0.5 * (1 - 1 / 30 + 1 - 1 / 32)
    q = NormalDist().inv_cdf
    pos = [q(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-q(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    levels = np.array(sorted([*pos, 0.0, *neg]), np.float64)
    return (levels / np.abs(levels).max()).astype(np.float32)


NF4 = nf4_levels()


def block_size(last: int, mode: str) -> int:
    """Values per block along the last axis: 64, or the largest power of two dividing `last` (tiny models)."""
    bs = math.gcd(BLOCK, last)
    if mode == "nf4" and bs < 2:
        raise ValueError(f"nf4 packs two values per byte: the last axis ({last}) must be even")
    return bs


def codes_shape(shape: tuple[int, ...], mode: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(codes shape, scale shape) of a weight of `shape` quantized with `mode`."""
    *lead, last = shape
    bs = block_size(last, mode)
    return (*lead, last // 2 if mode == "nf4" else last), (*lead, last // bs)


def quantize(w: jax.Array, mode: str) -> tuple[jax.Array, jax.Array]:
    """(codes, scale) of w (any float dtype, blocks along the last axis); see the module docstring."""
    *lead, last = w.shape
    bs = block_size(last, mode)
    blocks = w.astype(jnp.float32).reshape(*lead, last // bs, bs)
    absmax = jnp.max(jnp.abs(blocks), axis=-1)
    x = blocks / jnp.where(absmax == 0, 1.0, absmax)[..., None]
    if mode == "int8":
        return jnp.round(x * 127).astype(jnp.int8).reshape(w.shape), absmax
    levels = jnp.asarray(NF4)
    idx = jnp.searchsorted((levels[1:] + levels[:-1]) / 2, x.reshape(*lead, last)).astype(jnp.uint8)  # nearest
    pairs = idx.reshape(*lead, last // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(jnp.uint8), absmax


def dequantize(codes: jax.Array, scale: jax.Array, mode: str, dtype) -> jax.Array:
    """The weight of (codes, scale) in `dtype` (the computation in float32)."""
    if mode == "int8":
        x = codes.astype(jnp.float32) / 127.0
    else:
        lo, hi = codes & 0xF, codes >> 4
        idx = jnp.stack([lo, hi], axis=-1).reshape(*codes.shape[:-1], codes.shape[-1] * 2)
        x = jnp.take(jnp.asarray(NF4), idx.astype(jnp.int32))
    *lead, last = x.shape
    n = scale.shape[-1]
    w = x.reshape(*lead, n, last // n) * scale[..., None].astype(jnp.float32)
    return w.reshape(*lead, last).astype(dtype)


def weight(p: Mapping[str, jax.Array], name: str, spec: LoraSpec | None, dtype) -> jax.Array:
    """Parameter `name` of `p` in `dtype`, dequantized when the base is quantized (a `<name>_scale` is present)."""
    scale = p.get(f"{name}_scale")
    if scale is None:
        return p[name].astype(dtype)
    return dequantize(p[name], scale, spec.base_dtype, dtype)
