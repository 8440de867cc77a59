"""Compile-time proof that a training config fits its accelerator slice, without running it.

`check_config(cfg, target)` builds a config's programs the way the training loops build them
(`train/loop.py` for sft / oxa / curio / entropy_reg / dft, `train/grpo_loop.py` for grpo) from abstract values
only (`jax.eval_shape`, `ShapeDtypeStruct`s placed with `sharding=`; the model is never allocated), compiles each
program for the target devices and reads `compiled.memory_analysis()`:

  * every method: `train_step` (the jitted step of `make_train_step`: state donated, micro-batch scan, chunked
    head) on the step's global batch from `data.pipeline.batch_layout(cfg)`;
  * grpo, additionally: `ref_logprobs` (the frozen reference model's log-probs, when grpo.kl_coef > 0),
    `prefill`, `insert` and `decode` (the continuous KV-cache sampler the loop runs, at `grpo.sampler_rows`
    decode slots, the longest prompt bucket and `grpo.max_new_tokens`; on dense slot caches, or with
    `grpo.kv_pages` > 0 on page pools of that many pages per batch device). `max_sampler_rows` and
    `max_kv_pages` search the most rows / pages per device that keep a headroom.

The target is a TPU slice compiled on any host (`resolve_target("v5e-8")`: with `libtpu` installed and
`JAX_PLATFORMS=cpu`, `jax.experimental.topologies` gives compile-only devices of a real slice and the TPU compiler
refuses a program that does not fit HBM), a host of NVIDIA GPUs compiled the same way (`resolve_target("h100")`,
"8xh100", "h200", "8xh200": the CUDA plugin's deviceless compile, `train/gpu_targets.py`; the GPU compiler refuses
nothing, so the figure is judged against the card's budget here), or the local devices (`resolve_target(None)`).
Every result names the attention kernels its program lowered to (`attention_kernels`: splash, paged_attention,
cudnn, triton), read from the compiled program's custom calls.

Memory is per chip, in GiB (2**30 bytes). A program's own footprint is arguments + outputs - aliased (donated)
buffers + temporaries. Buffers that a loop keeps alive on the device while the program runs are added as
`resident`. In GRPO with `grpo.offload_state` (the default) the train state waits in pinned host memory during
rollouts and the reference (in the compute dtype) outside its log-prob pass, so only `ref_logprobs` has a resident
(the train state); the two moves are compiled for the target as well. Without it, the reference is resident
throughout and the train state during sampling. The sampler's own bfloat16 parameter copy is an argument of
prefill / decode, dropped before the update (off TPU as one array per layer, the form the sampler decodes
from). `per_chip = program + resident` is judged against the chip's HBM, as the compiler reports it (a probe
program that asks for more than any chip has), else the `HBM_GIB` table.

FLOPs are the analytic model count per call (6N per trained token plus causal attention, 2N per forward-only
token; `throughput.train_flops_per_token`), for every token slot of the batch filled with a real token (what packing
approaches): XLA's `cost_analysis()` counts a scanned layer loop once, so it is not used.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from exploresft_jax import sharding as shd
from exploresft_jax.data import pipeline
from exploresft_jax.models import qwen2
from exploresft_jax.sampling.sampler import cast_weights
from exploresft_jax.train import gpu_targets, offload, runtime
from exploresft_jax.train.objectives import OBJECTIVES
from exploresft_jax.train.optim import make_optimizer
from exploresft_jax.train.step import (
    StepConfig,
    init_train_state,
    make_train_step,
    split_model,
    train_state_shardings,
    weights,
)
from exploresft_jax.train.throughput import train_flops_per_token

GIB = 2.0 ** 30
LIBTPU_PIN = "libtpu==0.0.42.1"  # the libtpu that jax[tpu] 0.10.2 pins


class Topology(NamedTuple):
    """A slice as `jax.experimental.topologies.get_topology_desc` builds it.

    name: its topology_name ('v5e:2x4'); chip_config: its chip_config_name (v4 and v5p chips run as one megacore
    device, as on a real VM; without "megacore" a v4 topology gives one device per TensorCore); host_bounds: its
    chips_per_host_bounds, None for libtpu's default (2x2x1), which a slice of fewer chips is not divisible by.
    """

    name: str
    chip_config: str = "default"
    host_bounds: tuple[int, int, int] | None = None

    def kwargs(self) -> dict:
        """get_topology_desc's keyword arguments (besides platform)."""
        kw = {"topology_name": self.name, "chip_config_name": self.chip_config}
        return kw if self.host_bounds is None else {**kw, "chips_per_host_bounds": self.host_bounds}


# Slice name -> Topology.
TOPOLOGIES = {
    "v4-8": Topology("v4:2x2x1", "megacore"),
    "v5e-1": Topology("v5e:1x1", "default", (1, 1, 1)),
    "v5e-8": Topology("v5e:2x4", "default"),
    "v5p-8": Topology("v5p:2x2x1", "megacore"),
    "v6e-1": Topology("v6e:1x1", "default", (1, 1, 1)),
    "v6e-8": Topology("v6e:2x4", "default"),
}
# HBM per chip (GiB) when the compiler cannot be asked; the compiler's own figures (probe) take precedence:
# it reports v4 as 30.75 (32 physical, less what the runtime reserves).
# GPUs: the budget of gpu_targets.GPUS (the marketed capacity in decimal GB).
HBM_GIB = {"TPU v4": 32.0, "TPU v5 lite": 15.75, "TPU v5e": 15.75, "TPU v5p": 95.74, "TPU v5": 95.74,
           "TPU v6 lite": 31.25, "TPU v6e": 31.25, "A100": 80.0 * 1e9 / GIB,
           **{g.upper(): spec.budget_bytes / GIB for g, spec in gpu_targets.GPUS.items()}}
# The model presets by the size they name in a folder / run name (for model.init=hf folders not on this host).
# (substring of a lower-cased model.path, preset), most specific first: the family before the size
PRESET_HINTS = (("qwen3-1.7b", "qwen3_1p7b"), ("qwen3_1p7b", "qwen3_1p7b"), ("qwen3-4b", "qwen3_4b"),
                ("qwen3_4b", "qwen3_4b"), ("llama-3.2-3b", "llama3p2_3b"), ("llama3p2_3b", "llama3p2_3b"),
                ("llama-3.1-8b", "llama3p1_8b"), ("llama3p1_8b", "llama3p1_8b"),
                ("7b", "qwen2p5_math_7b"), ("1.5b", "qwen2p5_math_1p5b"), ("1p5b", "qwen2p5_math_1p5b"),
                ("1_5b", "qwen2p5_math_1p5b"))


class FitError(ValueError):
    """A bad request (unknown topology, libtpu missing, bad config): one line saying what to do."""


@dataclasses.dataclass
class Target:
    """Devices to compile for. hbm_bytes: per chip; hbm_source: 'compiler' | 'device' | 'table' | 'host';
    compiler_options: passed to every `compile()` for this target."""

    name: str
    devices: list
    hbm_bytes: float | None
    hbm_source: str
    compiler_options: dict = dataclasses.field(default_factory=dict)

    @property
    def device_kind(self) -> str:
        return self.devices[0].device_kind

    @property
    def platform(self) -> str:
        return self.devices[0].platform


@dataclasses.dataclass
class ProgramFit:
    """One compiled program. Sizes in GiB per chip; flops per call; compile_s in seconds."""

    program: str
    config: str
    topology: str
    device_kind: str
    chips: int
    mesh: dict
    argument_gib: float
    output_gib: float
    alias_gib: float
    temp_gib: float
    program_gib: float  # arguments + outputs - aliased + temporaries
    resident_gib: float  # other buffers the loop keeps on the device meanwhile
    per_chip_gib: float
    hbm_gib: float | None
    hbm_source: str
    headroom_pct: float | None  # 100 * (1 - per_chip / hbm)
    fits: bool
    flops: float
    compile_s: float
    shapes: dict
    notes: list = dataclasses.field(default_factory=list)
    error: str = ""  # the compiler's refusal, when it refused
    kernels: list = dataclasses.field(default_factory=list)  # attention kernels it lowered to; [] = plain XLA

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 4) if k != "flops" else v
        return d


# --- targets --------------------------------------------------------------------------------------------------
def _hbm_from_message(msg: str) -> float | None:
    m = re.search(r"available HBM \(([\d.]+)([KMGT])\)", msg) or re.search(r"of ([\d.]+)([KMGT]) hbm", msg)
    return None if m is None else float(m.group(1)) * 1024.0 ** "KMGT".index(m.group(2)) * 1024


def requested_bytes(msg: str) -> float | None:
    """The size a refused program asked for, from the TPU compiler's RESOURCE_EXHAUSTED message (bytes)."""
    for pat in (r"Used ([\d.]+)([KMGT]) of", r"required for [\w ]+ \(([\d.]+)([KMGT])\)",
                r"requirement ([\d.]+)([KMGT])"):
        m = re.search(pat, msg)
        if m:
            return float(m.group(1)) * 1024.0 ** "KMGT".index(m.group(2)) * 1024
    return None


def _probe_hbm(device) -> float | None:
    """HBM per chip as the TPU compiler sees it: compile a program asking for 128 GiB and read its refusal."""
    s = jax.sharding.SingleDeviceSharding(device)
    a = jax.ShapeDtypeStruct((1 << 18, 256), jnp.bfloat16, sharding=s)
    b = jax.ShapeDtypeStruct((1 << 17, 256), jnp.bfloat16, sharding=s)
    try:
        jax.jit(lambda a, b: jnp.einsum("id,jd->ij", a, b, preferred_element_type=jnp.float32)).lower(a, b).compile()
    except Exception as e:  # noqa: BLE001 - the refusal is the answer
        return _hbm_from_message(str(e))
    return None


def _table_hbm(kind: str) -> float | None:
    for name, gib in sorted(HBM_GIB.items(), key=lambda kv: -len(kv[0])):  # longest name first: "TPU v5 lite"
        if name.lower() in kind.lower():
            return gib * GIB
    return None


def _gpu_target(name: str, spec: gpu_targets.GpuSpec, count: int) -> Target:
    if not gpu_targets.plugin_installed():
        raise FitError(f"compiling for {name} needs the CUDA plugin (no GPU): {gpu_targets.CUDA_PLUGIN_INSTALL}")
    try:
        devices = gpu_targets.devices(spec, count)
    except Exception as e:  # noqa: BLE001 - the plugin's own message, on one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FitError(f"cannot build {count} x {spec.name} for {name} ({first}); run with JAX_PLATFORMS=cpu and "
                       f"{gpu_targets.CUDA_PLUGIN_INSTALL}") from None
    return Target(name, devices, spec.budget_bytes, "table", dict(gpu_targets.DEVICELESS_COMPILER_OPTIONS))


TARGET_NAMES = (*TOPOLOGIES, *gpu_targets.GPUS, *(f"8x{g}" for g in gpu_targets.GPUS))


def resolve_target(topology: str | None) -> Target:
    """Devices for a TPU slice name (TOPOLOGIES keys, or a raw 'v5e:4x4' topology in libtpu's default hosts of
    2x2 chips), a GPU host ('h100', 'h200', '8xh100', '<n>xh200'), or None: the local devices."""
    if topology is None:
        devices = jax.devices()
        d0 = devices[0]
        stats = {}
        try:
            stats = d0.memory_stats() or {}
        except Exception:  # noqa: BLE001 - not every backend reports memory
            pass
        if stats.get("bytes_limit"):
            return Target(f"local:{d0.platform}", devices, float(stats["bytes_limit"]), "device")
        if d0.platform == "cpu":  # host RAM is the CPU devices' memory, shared by all of them
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            return Target("local:cpu", devices, float(ram) / len(devices), "host")
        hbm = _table_hbm(d0.device_kind)
        return Target(f"local:{d0.platform}", devices, hbm, "table" if hbm else "unknown")
    gpu = gpu_targets.parse(topology)
    if gpu is not None:
        return _gpu_target(topology, *gpu)
    if topology in TOPOLOGIES:
        topo = TOPOLOGIES[topology]
    elif re.fullmatch(r"v\d+[a-z]*:\d+(x\d+)+", topology):
        topo = Topology(topology, "megacore" if topology.split(":")[0] in ("v4", "v5p") else "default")
    else:
        raise FitError(f"unknown topology {topology!r}; use one of {', '.join(TARGET_NAMES)} "
                       f"(or a raw TPU topology such as v5e:4x4)")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise FitError(f"compiling for {topology} needs libtpu: pip install {LIBTPU_PIN}") from None
    from jax.experimental import topologies

    # libtpu takes a host-wide lock file at load unless told otherwise; compile-only devices drive no chip, so
    # several fit processes (parallel tests, a table beside a check) may load it at once.
    if jax.default_backend() != "tpu":
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        devices = list(topologies.get_topology_desc(platform="tpu", **topo.kwargs()).devices)
    except Exception as e:  # noqa: BLE001 - libtpu's own message, on one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FitError(f"cannot build TPU topology {topo.name!r} for {topology} ({first}); run with "
                       f"JAX_PLATFORMS=cpu and {LIBTPU_PIN}") from None
    hbm = _probe_hbm(devices[0])
    if hbm is not None:
        return Target(topology, devices, hbm, "compiler")
    hbm = _table_hbm(devices[0].device_kind)
    return Target(topology, devices, hbm, "table" if hbm else "unknown")


# --- model config ---------------------------------------------------------------------------------------------
def fallback_preset(cfg) -> str | None:
    """The preset named by model.path (e.g. 'Qwen2.5-Math-1.5B' or 'runs/oxa_qwen2p5_math_1p5b/hf_export')."""
    path = str(cfg.model.path).lower()
    for hint, preset in PRESET_HINTS:
        if hint in path:
            return preset
    return None


def model_config(cfg, preset: str | None = None) -> tuple[qwen2.Qwen2Config, str]:
    """(the Qwen2Config the loop would train, where its sizes came from).

    model.init=hf reads model.path/config.json as the loop does. When that folder is not on this host, the sizes
    come from a preset in `models/qwen2.py`: `preset` if given (`--preset`), else the one whose size model.path
    names (PRESET_HINTS: 'qwen3-4b' -> qwen3_4b, 'llama-3.1-8b' -> llama3p1_8b, '7b' -> qwen2p5_math_7b, ...).
    The config's overrides (dtype, remat, attention, RoPE theta, positions) apply either way.
    """
    if preset is not None and preset not in qwen2.PRESETS:
        raise FitError(f"--preset {preset!r}: expected one of {', '.join(qwen2.PRESETS)}")
    vocab = int(cfg.model.custom.get("vocab_size") or 0) or int(cfg.tokenizer.train_bpe_vocab or 0)
    if cfg.model.init == "hf" and preset is None and (Path(cfg.model.path) / "config.json").exists():
        return runtime.model_config(cfg, vocab), f"{cfg.model.path}/config.json"
    sub = copy.deepcopy(cfg)
    sub.unlock()
    if cfg.model.init == "hf" or preset is not None:
        chosen = preset or fallback_preset(cfg)
        if chosen is None:
            raise FitError(f"config.model.path={cfg.model.path!r} has no config.json here and names no model size; "
                           f"pass --preset {' | '.join(qwen2.PRESETS)}")
        sub.model.init, sub.model.preset = "random", chosen
        source = f"preset {chosen}" + ("" if preset else f" (model.path {cfg.model.path!r} is not on this host)")
    else:
        source = f"preset {cfg.model.preset}"
        if cfg.model.preset == "custom" and vocab <= 0:
            raise FitError("config.model.custom.vocab_size=0 with no tokenizer.train_bpe_vocab: set the vocab size")
    try:
        return runtime.model_config(sub, vocab), source
    except (KeyError, TypeError) as e:
        raise FitError(f"config.model: cannot build the model config ({e})") from None


def _validate(cfg, mcfg_source: str) -> None:
    """The loops' own config checks, minus what needs files on this host (data, model folder)."""
    from exploresft_jax.train.config import validate

    sub = copy.deepcopy(cfg)
    sub.unlock()
    sub.data.synthetic = "arithmetic"  # skips the data-file checks only
    if not mcfg_source.endswith("config.json"):
        sub.model.init, sub.model.preset = "random", "custom"
        sub.tokenizer.path = sub.tokenizer.path or "unused"
    validate(sub)
    if OBJECTIVES[cfg.method].rl:
        from exploresft_jax.train.config import validate_grpo

        sub.grpo.prompt_files = ()
        validate_grpo(sub)


# --- abstract values --------------------------------------------------------------------------------------------
def _place(tree, shardings):
    """ShapeDtypeStructs of `tree` (abstract or concrete) carrying `shardings` (same structure)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def per_chip_bytes(tree) -> float:
    """Bytes of one device's shards of a pytree of sharded ShapeDtypeStructs / arrays (even sharding)."""
    total = 0
    for a in jax.tree.leaves(tree):
        shape = a.sharding.shard_shape(a.shape) if getattr(a, "sharding", None) is not None else a.shape
        total += math.prod(shape) * jnp.dtype(a.dtype).itemsize
    return float(total)


def _abstract_batch(layout: dict, mesh, rules) -> dict:
    """ShapeDtypeStructs for a {name: (shape, dtype)} step batch, sharded as the loops shard it: micro-batch axis
    kept, rows over the rules' act_batch axes (replicated over an axis that does not divide them)."""
    out = {}
    for k, (shape, dtype) in layout.items():
        spec = shd.logical_to_spec((None, "act_batch"), rules, mesh, tuple(shape[:2]))
        out[k] = jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=NamedSharding(mesh, spec))
    return out


def grpo_batch_layout(cfg) -> tuple[dict, int, int]:
    """(layout of one GRPO optimizer step's batch, rows per step, row length), as `grpo_loop.build_batch` fills
    it: rows = prompts_per_step x group_size / mini_batches rollouts of max_prompt_length + max_new_tokens tokens
    (the longest it makes), split into batch.micro_batches micro-batches by `pipeline.batch_layout`'s row rule;
    per-token fields [micro, rows, T] (old / sampler / ref log-probs float32), per-row is_negative, weight and
    advantages [micro, rows] (the row form the step accepts for one example per row).
    """
    from exploresft_jax.train.grpo_loop import BATCH_KEYS

    g = cfg.grpo
    rows = g.prompts_per_step * g.group_size // g.mini_batches
    row_len = g.max_prompt_length + g.max_new_tokens
    sub = copy.deepcopy(cfg)
    sub.unlock()
    sub.method, sub.batch.global_size, sub.data.max_length = "sft", rows, row_len
    micro, per_micro, t = pipeline.batch_layout(sub)["tokens"][0]
    per_row = {"is_negative": "int32", "weight": "float32", "advantages": "float32"}
    per_token_f32 = ("old_logp", "sampler_logp", "ref_logp")
    layout = {k: ((micro, per_micro), per_row[k]) if k in per_row else
              ((micro, per_micro, t), "float32" if k in per_token_f32 else "int32") for k in BATCH_KEYS}
    return layout, rows, row_len


def _shapes_of(layout: dict) -> dict:
    return {k: list(v[0]) for k, v in layout.items()}


# --- compiling ---------------------------------------------------------------------------------------------------
def _compile(lower: Callable[[], Any], options: dict | None = None):
    """(compiled or None, seconds, refusal message). Only the compiler's out-of-memory refusal is caught.
    options: the target's `compiler_options`."""
    t0 = time.perf_counter()
    try:
        compiled = lower().compile(compiler_options=options or None)
    except Exception as e:  # noqa: BLE001 - filtered just below
        msg = str(e)
        if "RESOURCE_EXHAUSTED" in msg or "Ran out of memory" in msg:
            return None, time.perf_counter() - t0, " ".join(msg.split())[:600]
        raise
    return compiled, time.perf_counter() - t0, ""


# custom-call target (or Pallas TPU kernel name) -> the attention kernel it is
_KERNEL_CALLS = (("__cudnn$fmha", "cudnn"), ("__gpu$xla.gpu.triton", "triton"), ("mosaic_gpu", "mosaic_gpu"))


def attention_kernels(compiled) -> list[str]:
    """The attention kernels a compiled program calls, from its custom calls: 'splash' (Pallas TPU splash),
    'cudnn' (cuDNN fused attention), 'triton' (Pallas Triton flash), 'mosaic_gpu'; other Pallas TPU kernels by
    their name. [] when attention is plain XLA (dense / blockwise)."""
    found = set()
    for line in compiled.as_text().splitlines():
        m = re.search(r'custom_call_target="([^"]+)"', line)
        if m is None:
            continue
        target = m.group(1)
        for prefix, kernel in _KERNEL_CALLS:
            if target.startswith(prefix):
                found.add(kernel)
        if target == "tpu_custom_call":
            op = re.match(r"\s*(?:ROOT )?%?([\w.\-]+)", line)
            name = op.group(1) if op else "pallas_tpu"
            found.add("splash" if "splash" in name else re.sub(r"[.\d]+$", "", name))
    return sorted(found)


def _result(name: str, compiled, seconds: float, refusal: str, *, cfg_name: str, target: Target, mesh,
            resident: float, flops: float, shapes: dict, notes: list) -> ProgramFit:
    hbm = target.hbm_bytes
    if compiled is not None:
        m = compiled.memory_analysis()
        arg, out, alias, temp = (float(getattr(m, f"{k}_size_in_bytes", 0) or 0)
                                 for k in ("argument", "output", "alias", "temp"))
        program = arg + out - alias + temp
        per_chip = program + resident
        fits = hbm is None or per_chip <= hbm
    else:
        arg = out = alias = temp = float("nan")
        asked = requested_bytes(refusal)
        program = asked if asked is not None else float("nan")
        per_chip = program + resident
        hbm = _hbm_from_message(refusal) or hbm
        fits = False
    kernels = attention_kernels(compiled) if compiled is not None else []
    headroom = None if hbm is None or math.isnan(per_chip) else 100.0 * (1.0 - per_chip / hbm)
    g = lambda b: b / GIB  # noqa: E731
    return ProgramFit(program=name, config=cfg_name, topology=target.name, device_kind=target.device_kind,
                      chips=len(target.devices), mesh=dict(mesh.shape), argument_gib=g(arg), output_gib=g(out),
                      alias_gib=g(alias), temp_gib=g(temp), program_gib=g(program), resident_gib=g(resident),
                      per_chip_gib=g(per_chip), hbm_gib=None if hbm is None else g(hbm),
                      hbm_source=target.hbm_source, headroom_pct=headroom, fits=bool(fits), flops=float(flops),
                      compile_s=seconds, shapes=shapes, notes=list(notes), error=refusal, kernels=kernels)


def _train_state(mcfg, tx, sc, mesh, rules):
    """(graphdef, abstract TrainState placed as `init_train_state` places it on this mesh).

    The parameters are placed by `sharding.state_shardings` (as `init_model` / `load_hf_model` place them), the
    rest by `step.train_state_shardings` (what `init_train_state` gives its jit as out_shardings).
    """
    graphdef, params, frozen = split_model(qwen2.abstract_model(mcfg))
    params = _place(params, shd.state_shardings(params, mesh, rules))
    if frozen is not None:  # LoRA: the frozen base, placed as load_hf_model places it
        frozen = _place(frozen, shd.state_shardings(frozen, mesh, rules))

    def build(p, f):
        return init_train_state(nnx.merge(graphdef, weights(p, f)), tx, sc)[1]

    state_sh = train_state_shardings(params, tx, sc, frozen)
    return graphdef, _place(jax.eval_shape(build, params, frozen), state_sh)


def _same_placement(frozen, samp_params) -> bool:
    """True when every frozen leaf keeps its sharding under the sampling rules (then `device_put` to them is a
    no-op and the sampler shares the train state's base instead of copying it)."""
    by_path = dict(jax.tree_util.tree_flatten_with_path(samp_params)[0])
    return all(by_path[p].sharding.is_equivalent_to(x.sharding, x.ndim)
               for p, x in jax.tree_util.tree_flatten_with_path(frozen)[0])


def _decode_state_shardings(st, mesh, rules):
    """The sampler's placement of a DecodeState (`sampler.constrain_state`): per-row arrays over the batch
    devices, the KV cache [L, B, K, S, H] on its row axis, scalars replicated."""

    def one(x):
        if x.ndim == 0:
            return shd.replicated(mesh)
        axes = qwen2.KVCache.AXES if x.ndim == 5 else ("act_batch",)
        return NamedSharding(mesh, shd.logical_to_spec(axes + (None,) * (x.ndim - len(axes)), rules, mesh, x.shape))

    return jax.tree.map(one, st)


def forward_flops_per_token(mcfg: qwen2.Qwen2Config, context: float) -> float:
    """Forward-only FLOPs per token attending to `context` keys: 2N plus 4 * L * heads * head_dim * context."""
    return 2 * mcfg.num_params + 4 * mcfg.num_layers * mcfg.num_heads * mcfg.head_dim * context


PROGRAMS = ("train_step", "ref_logprobs", "prefill", "insert", "decode")


def check_config(cfg, target: Target, *, cfg_name: str = "config", preset: str | None = None,
                 say: Callable[[str], None] | None = None,
                 programs: Sequence[str] | None = None) -> list[ProgramFit]:
    """Compiles the config's programs for `target` (see the module docstring); one ProgramFit per program.

    programs: a subset of PROGRAMS to compile (default all that the method runs).
    """
    say = say or (lambda _msg: None)
    wanted = set(PROGRAMS if programs is None else programs)
    if wanted - set(PROGRAMS):
        raise FitError(f"unknown program(s) {sorted(wanted - set(PROGRAMS))}; expected some of {', '.join(PROGRAMS)}")
    mcfg, source = model_config(cfg, preset)
    try:
        _validate(cfg, source)
    except ValueError as e:
        raise FitError(str(e)) from None
    try:
        mesh = shd.make_mesh(tuple(cfg.mesh.shape), devices=target.devices)
    except ValueError as e:
        raise FitError(f"config.mesh.shape={tuple(cfg.mesh.shape)} on {target.name}: {e}") from None
    rules = shd.TRAIN_RULES
    notes = [f"model: {source}", f"attention={mcfg.attention}", f"remat={mcfg.remat_policy}"]
    common = dict(cfg_name=cfg_name, target=target, mesh=mesh)
    if OBJECTIVES[cfg.method].rl:
        return _check_grpo(cfg, mcfg, mesh, rules, notes, say, common, wanted)

    sc = StepConfig.from_config(cfg)
    total_steps = cfg.optim.num_steps or 1000  # the schedule's length does not change memory
    tx, schedule = make_optimizer(cfg.optim, total_steps)
    with shd.use_rules(mesh, rules):
        graphdef, state = _train_state(mcfg, tx, sc, mesh, rules)
        layout = pipeline.batch_layout(cfg)
        batch = _abstract_batch(layout, mesh, rules)
        batch_sh = {k: v.sharding for k, v in batch.items()}
        state_sh = jax.tree.map(lambda x: x.sharding, state)
        step_fn = make_train_step(graphdef, tx, schedule, sc, state_sh, batch_sh, shd.replicated(mesh))
        say(f"compiling train_step for {target.name} ...")
        compiled, secs, refusal = _compile(lambda: step_fn.lower(state, batch), target.compiler_options)
    t = cfg.data.max_length
    tokens = math.prod(layout["tokens"][0])
    flops = train_flops_per_token(mcfg, t, int(sc.lagged_teacher)) * tokens
    return [_result("train_step", compiled, secs, refusal, resident=0.0, flops=flops, shapes=_shapes_of(layout),
                    notes=notes, **common)]


def _check_grpo(cfg, mcfg, mesh, rules, notes, say, common, wanted) -> list[ProgramFit]:
    from exploresft_jax.sampling.strategies import SamplingConfig
    from exploresft_jax.train import grpo_loop

    g = cfg.grpo
    opts = common["target"].compiler_options
    sc = StepConfig.from_config(cfg)
    total = cfg.optim.num_steps or 1000
    tx, schedule = make_optimizer(grpo_loop.optim_config(cfg), total * g.mini_batches * g.ppo_epochs)
    results = []
    layout, rows, row_len = grpo_batch_layout(cfg)
    with shd.use_rules(mesh, rules):
        graphdef, state = _train_state(mcfg, tx, sc, mesh, rules)
        state_sh = jax.tree.map(lambda x: x.sharding, state)
        batch = _abstract_batch(layout, mesh, rules)
        batch_sh = {k: v.sharding for k, v in batch.items()}
        # the reference: a copy of the parameters in the compute dtype, or with LoRA zeroed adapters over the
        # state's own base (grpo_loop.reference_params)
        ref = jax.eval_shape(lambda p: grpo_loop.reference_params(dataclasses.replace(state, params=p), mcfg.dtype),
                             state.params)
        ref = _place(ref, jax.tree.map(lambda x: x.sharding, state.params))
        ref_bytes = per_chip_bytes(ref) if g.kl_coef else 0.0
        samp_rules = grpo_loop.sampling_rules(mesh)
        model_state = weights(state.params, state.frozen)
        samp_state = cast_weights(model_state, mcfg.dtype, mcfg.lora_spec)  # the sampler's copy (weight_dtype)
        samp_params = _place(samp_state, shd.state_shardings(samp_state, mesh, samp_rules))
        state_bytes = per_chip_bytes(state)
        if state.frozen is not None and _same_placement(state.frozen, samp_params):
            state_bytes -= per_chip_bytes(state.frozen)  # the sampler reads the very same base buffers
        # grpo.offload_state: the state waits in host memory during rollouts, the reference outside its phase;
        # the two moves are compiled for the target too (a target without host memory would refuse them)
        parked = bool(g.offload_state)
        if parked:
            moved = dataclasses.replace(state, frozen=None)
            to_host, to_dev = offload.transfer_programs(moved)
            host_state = _place(moved, jax.tree.map(lambda x: x.sharding.with_memory_kind(offload.HOST), moved))
            for what, lower in (("offload", lambda: to_host.lower(moved)),
                                ("reload", lambda: to_dev.lower(host_state))):
                _, _, refusal = _compile(lower, opts)
                if refusal:
                    raise FitError(f"{common['target'].name}: the train state's {what} to host memory was refused "
                                   f"({refusal}); set --config.grpo.offload_state=False")

        step_fn = make_train_step(graphdef, tx, schedule, sc, state_sh, batch_sh, shd.replicated(mesh))
        if "train_step" in wanted:
            say(f"compiling grpo train_step for {common['target'].name} ...")
            compiled, secs, refusal = _compile(lambda: step_fn.lower(state, batch), opts)
    tokens = math.prod(layout["tokens"][0])
    train_resident = 0.0 if parked else ref_bytes
    res_notes = notes + ([f"resident: reference params {ref_bytes / GIB:.2f} GiB"] if train_resident else
                         ["resident: - (the reference waits in host memory)"] if ref_bytes else ["resident: -"])
    if "train_step" in wanted:
        results.append(_result("train_step", compiled, secs, refusal, resident=train_resident,
                               flops=train_flops_per_token(mcfg, row_len) * tokens,
                               shapes=_shapes_of(layout), notes=res_notes, **common))

    # the frozen reference's log-probs, one forward per mini-batch (the state stays resident)
    if g.kl_coef and "ref_logprobs" in wanted:
        with shd.use_rules(mesh, rules):
            say("compiling ref_logprobs ...")
            ref_state = weights(ref, state.frozen)
            compiled, secs, refusal = _compile(lambda: grpo_loop.rollout_logprobs.lower(
                graphdef, ref_state, batch, chunk_size=sc.chunk_size, temperature=sc.options.rollout_temperature,
                vocab_chunk_size=sc.vocab_chunk_size, packed=sc.packed), opts)
        results.append(_result("ref_logprobs", compiled, secs, refusal, resident=state_bytes,
                               flops=forward_flops_per_token(mcfg, row_len / 2) * tokens,
                               shapes=_shapes_of(layout),
                               notes=notes + [f"resident: train state {state_bytes / GIB:.2f} GiB"], **common))

    # --- the sampler at its largest batch: sampler_rows rows, the longest prompt bucket ---------------------------
    if parked:  # only the sampler's weight copy and its programs' buffers are on the chips
        resident = 0.0
        res_notes = notes + ["resident: - (train state and reference wait in host memory: grpo.offload_state)"]
    else:
        resident = state_bytes + ref_bytes
        res_notes = notes + [f"resident: train state {state_bytes / GIB:.2f} GiB"
                             + (f" + reference params {ref_bytes / GIB:.2f} GiB" if ref_bytes else "")]
    samp_cfg = SamplingConfig(temperature=float(g.temperature), top_p=float(g.top_p), top_k=int(g.top_k))
    results += _sampler_programs(graphdef, samp_params, mcfg, mesh, samp_rules, samples=g.group_size,
                                 max_rows=g.sampler_rows, prompt_len=g.max_prompt_length,
                                 new_tokens=int(g.max_new_tokens), samp_cfg=samp_cfg, resident=resident,
                                 notes=res_notes, common=common, wanted=wanted, say=say, prompts=g.prompts_per_step,
                                 kv_pages=g.kv_pages, page_size=g.page_size)
    return results


def _sampler_programs(graphdef, samp_params, mcfg, mesh, samp_rules, *, engine: str = "continuous", **kw
                      ) -> list[ProgramFit]:
    """The sampler's programs for `engine` (the `Sampler` default, continuous, is what GRPO, scripts/generate.py
    and the notebook run); see `_continuous_programs` and `_static_programs` for the keywords."""
    return SAMPLER_ENGINE_PROGRAMS[engine](graphdef, samp_params, mcfg, mesh, samp_rules, **kw)


def _shape_sampler(graphdef, samp_params, mcfg, mesh, samp_rules, max_rows: int, **kw):
    """A `Sampler` over abstract parameters: its own row buckets, shardings and engine sizes, and its weights in
    the forms the real one holds, for compiling its programs. Off TPU the real sampler decodes from per-layer
    copies of the layer weights (`Sampler(unstack_layers=)`) and frees the stacked ones: here `decode_weights` are
    those copies as its copy program places them, and `params` has the stacked layer arrays emptied (so the bytes
    are counted once). kw: further `Sampler` settings (kv_pages, page_size)."""
    from exploresft_jax.sampling import sampler as smp

    class _ShapeSampler(smp.Sampler):
        def update_params(self, params):
            if self.unstack_layers or self.transpose_head:
                self.decode_weights = smp._decode_copies.lower(self.graphdef, params, layers=self.unstack_layers,
                                                               head=self.transpose_head).out_info
            if self.unstack_layers:
                rep = shd.replicated(self.mesh)
                params = smp._hollow_layers(params, lambda dtype: jax.ShapeDtypeStruct((0,), dtype, sharding=rep))
            self.params = params

    return _ShapeSampler(graphdef=graphdef, params=samp_params, mesh=mesh, rules=samp_rules, cache_dtype=mcfg.dtype,
                         max_rows=max_rows, **kw)


def _continuous_programs(graphdef, samp_params, mcfg, mesh, samp_rules, *, samples: int, max_rows: int,
                         prompt_len: int, new_tokens: int, samp_cfg, resident: float, notes, common, wanted, say,
                         prompts: int | None = None, kv_pages: int = 0, page_size: int = 16) -> list[ProgramFit]:
    """The continuous engine (`sampling.continuous`) at its largest shapes, as `run_continuous` sizes them for
    `prompts` x `samples` rows (default: enough to fill `max_rows` slots) of up to `prompt_len` + `new_tokens`,
    on dense slot caches or (kv_pages > 0) page pools of `kv_pages` pages of `page_size` entries per batch
    device:

      * `prefill`: a refill's prompt prefill into the prompt pool (the most prompts one refill can need);
      * `insert`: starting samples in every slot at once (pool entries copied into the slot caches);
      * `decode`: one decode chunk (`Sampler.decode_chunk` steps) with the attention window at the capacity
        (every slot at the longest length).
    The slot state (per-slot caches [L, B, K, C, H] or the page pools, outputs [R, max_new]) and the prompt pool
    are donated arguments."""
    from exploresft_jax.sampling import continuous as cont
    from exploresft_jax.sampling.buckets import next_pow2
    from exploresft_jax.sampling.paged import require_row_fits

    results = []
    opts = common["target"].compiler_options
    sampler = _shape_sampler(graphdef, samp_params, mcfg, mesh, samp_rules, max_rows, kv_pages=kv_pages,
                             page_size=page_size)
    n, new = samples, int(new_tokens)
    num = (prompts or -(-max_rows // n)) * n
    slots, capacity, pool_size, pool_len, rows_out = cont.engine_shapes(sampler, prompt_len, prompt_len + new, num, n)
    if kv_pages:
        try:
            require_row_fits(kv_pages, page_size, prompt_len + new)
        except ValueError as e:
            raise FitError(f"grpo.{e}") from None
    # a refill may start mid-prompt; it prefills at most `prefill_prompts` per call
    refill_prompts = min(pool_size, next_pow2(-(-slots // n) + 1), cont.prefill_prompts(pool_len))
    sds = jax.ShapeDtypeStruct
    rep = shd.replicated(mesh)
    key = sds((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=rep)
    stop = sds((4,), jnp.int32, sharding=rep)
    i32 = lambda *shape: sds(shape, jnp.int32, sharding=rep)  # noqa: E731
    shapes = {"slots": [slots], "cache_slots": [capacity], "prompt_pool": [pool_size, pool_len],
              "outputs": [rows_out, new]}
    res_notes = list(notes) + [f"continuous engine: {slots} slots of {capacity} cache entries, {num} samples "
                               f"({num // n} prompts x {n})"]
    if kv_pages:
        shapes["kv_pages"] = [kv_pages, page_size]
        res_notes.append(f"paged KV cache: {kv_pages} pages of {page_size} entries per batch device "
                         f"({sampler.batch_devices} devices; {kv_pages * page_size // capacity} rows of "
                         f"{capacity} entries each)")
    with shd.use_rules(mesh, samp_rules):
        init = cont._init_fn(mesh, samp_rules, mcfg, slots, capacity, rows_out, new, sampler.cache_dtype, 0,
                             pool_size, pool_len, kv_pages, page_size if kv_pages else 0)
        # as the engine creates them (its explicit output shardings; not compiled: a state too large for the chip
        # is reported by the programs that take it)
        st, pool = init.lower().out_info
        # (lower, flops, what stays on the chips beside the program's arguments: the slot state during a prefill,
        # the prompt pool during decode)
        params, weights = sampler.params, sampler.decode_weights  # as the real sampler holds them
        programs = {
            "prefill": (lambda: cont._prefill_pool.lower(graphdef, params, pool, i32(refill_prompts, pool_len),
                                                          i32(refill_prompts), i32(refill_prompts), weights),
                        forward_flops_per_token(mcfg, pool_len / 2) * refill_prompts * pool_len, per_chip_bytes(st)),
            "insert": (lambda: cont._insert.lower(graphdef, params, st, pool, i32(slots), i32(slots), i32(slots),
                                                  i32(slots), key, stop, weights, cfg=samp_cfg), 0.0, 0.0),
            "decode": (lambda: cont._decode_chunk.lower(graphdef, params, st, key, stop, i32(), weights,
                                                        cfg=samp_cfg, steps=sampler.decode_chunk, window=capacity),
                       forward_flops_per_token(mcfg, capacity) * slots * sampler.decode_chunk, per_chip_bytes(pool)),
        }
        for name, (lower, flops, beside) in programs.items():
            if name not in wanted:
                continue
            say(f"compiling {name} ...")
            compiled, secs, refusal = _compile(lower, opts)
            results.append(_result(name, compiled, secs, refusal, resident=resident + beside, flops=flops,
                                   shapes=shapes,
                                   notes=res_notes + ([f"flops: one chunk of {sampler.decode_chunk} steps"]
                                                      if name == "decode" else []), **common))
    return results


def _static_programs(graphdef, samp_params, mcfg, mesh, samp_rules, *, samples: int, max_rows: int,
                     prompt_len: int, new_tokens: int, samp_cfg, resident: float, notes, common, wanted,
                     say, prompts: int | None = None) -> list[ProgramFit]:
    """The static engine's `prefill` and `decode` at the sampler's largest batch (max_rows // samples prompts x
    `samples`, the prompt bucket of `prompt_len`, `new_tokens` cache slots after it), as `Sampler` shapes it."""
    from exploresft_jax.sampling import sampler as smp
    from exploresft_jax.sampling.buckets import next_pow2

    results = []
    opts = common["target"].compiler_options
    sampler = _shape_sampler(graphdef, samp_params, mcfg, mesh, samp_rules, max_rows)
    n = samples
    per = max(1, sampler.max_rows // n)  # prompts per sampler batch, as Sampler._batches groups them
    lp = max(sampler.min_prompt_bucket, next_pow2(prompt_len))
    p_rows, b = sampler.row_bucket(per), sampler.row_bucket(per * n)
    mat, row = sampler.mat_sharding, sampler.row_sharding
    sds = jax.ShapeDtypeStruct
    rep = shd.replicated(mesh)
    key = sds((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=rep)
    stop = sds((4,), jnp.int32, sharding=rep)
    args = (graphdef, sampler.params, sds((p_rows, lp), jnp.int32, sharding=mat), sds((p_rows, lp), bool, sharding=mat),
            sds((b,), jnp.int32, sharding=row), sds((b,), bool, sharding=row), sds((b,), jnp.int32, sharding=row),
            key, stop)
    new = int(new_tokens)
    kw = dict(cfg=samp_cfg, max_new=new, cache_dtype=sampler.cache_dtype, pad_id=0)
    weights = sampler.decode_weights  # as the real sampler holds them
    shapes = {"prompts": [p_rows, lp], "rows": [b], "cache_slots": [lp + new]}
    res_notes = list(notes) + [f"{per} prompts x {n} samples per sampler batch"]
    with shd.use_rules(mesh, samp_rules):
        st = jax.eval_shape(lambda w, *a: smp.prefill(*a, weights=w, **kw), weights, *args)
        st_sh = _decode_state_shardings(st, mesh, samp_rules)
        if "prefill" in wanted:
            say("compiling prefill ...")
            compiled, secs, refusal = _compile(lambda: smp.prefill.lower(*args, weights=weights, **kw), opts)
            results.append(_result("prefill", compiled, secs, refusal, resident=resident,
                                   flops=forward_flops_per_token(mcfg, lp / 2) * p_rows * lp, shapes=shapes,
                                   notes=res_notes, **common))
            if compiled is not None:
                st_sh = compiled.output_shardings
        if "decode" in wanted:
            st = _place(st, st_sh)
            say("compiling decode ...")
            compiled, secs, refusal = _compile(lambda: smp.decode.lower(graphdef, sampler.params, st, stop,
                                                                         cfg=samp_cfg, pad_id=0, weights=weights),
                                               opts)
            results.append(_result("decode", compiled, secs, refusal, resident=resident,
                                   flops=forward_flops_per_token(mcfg, lp + new / 2) * b * new, shapes=shapes,
                                   notes=res_notes + [f"flops: all {new} steps"], **common))
    return results


SAMPLER_PROGRAMS = ("prefill", "insert", "decode")


@dataclasses.dataclass
class RowsSearch:
    """`max_sampler_rows`'s answer: `rows` the largest decode-row bucket whose sampler programs fit with the asked
    headroom (0 when even the smallest tried does not), `fits` its programs, `next_rows` / `next_fits` the bucket
    above it as compiled (None when the search stopped at the step's own rollouts, `cap`)."""

    rows: int
    fits: list
    next_rows: int | None
    next_fits: list | None
    cap: int

    def to_json(self) -> dict:
        worst = lambda res: None if not res else max(res, key=lambda r: r.per_chip_gib).to_json()  # noqa: E731
        return {"max_sampler_rows": self.rows, "cap": self.cap, "largest_program": worst(self.fits),
                "next_rows": self.next_rows, "next_largest_program": worst(self.next_fits)}


def _all_fit(res: Sequence[ProgramFit], min_headroom: float) -> bool:
    """Every program compiled and fits with at least `min_headroom` percent of HBM free."""
    return bool(res) and all(r.fits and r.headroom_pct is not None and r.headroom_pct >= min_headroom for r in res)


@dataclasses.dataclass
class PagesSearch:
    """`max_kv_pages`'s answer: `pages` the most KV pages per batch device (`grpo.kv_pages`) whose sampler programs
    fit with the asked headroom (0 when a pool for one longest row does not), `fits` its programs, `row_pages`
    the pages one longest row takes, `page_gib` the GiB per chip one more page per device costs (measured from
    two compiles), `tried` the pool sizes compiled."""

    pages: int
    fits: list
    row_pages: int
    page_gib: float
    page_size: int
    tried: list

    def to_json(self) -> dict:
        worst = max(self.fits, key=lambda r: r.per_chip_gib).to_json() if self.fits else None
        return {"max_kv_pages": self.pages, "page_size": self.page_size, "row_pages": self.row_pages,
                "longest_rows_per_device": self.pages // self.row_pages if self.row_pages else 0,
                "page_gib": round(self.page_gib, 6), "tried": self.tried, "largest_program": worst}


def max_kv_pages(cfg, target: Target, *, min_headroom: float = 10.0, preset: str | None = None,
                 say: Callable[[str], None] | None = None) -> PagesSearch:
    """The most KV pages per batch device (`grpo.kv_pages`, pages of `grpo.page_size` entries) whose sampler
    programs (`SAMPLER_PROGRAMS` at the config's `sampler_rows` and lengths, with what the loop keeps resident)
    all fit `target` with at least `min_headroom` percent free: the HBM left after everything else, in pages.

    Compiled at a pool of one longest row and of two; the difference gives the bytes per chip each page costs
    (the pools, and any temporaries that grow with them), and the memory line then gives the largest pool, which
    is compiled to confirm (stepped down by 5% while it does not fit, at most 4 times)."""
    if not OBJECTIVES[cfg.method].rl:
        raise FitError(f"--max-pages: config method {cfg.method!r} has no sampler in its loop (grpo only)")
    g = cfg.grpo
    row_pages = -(-(g.max_prompt_length + g.max_new_tokens) // g.page_size)
    tried: dict[int, list] = {}

    def at(pages: int) -> list:
        if pages not in tried:
            c = copy.deepcopy(cfg)
            c.grpo.kv_pages = pages
            (say or (lambda _m: None))(f"kv pages {pages} ...")
            tried[pages] = check_config(c, target, preset=preset, say=say, programs=SAMPLER_PROGRAMS)
        return tried[pages]

    def search(pages: int, fits: list, page_gib: float) -> PagesSearch:
        return PagesSearch(pages, fits, row_pages, page_gib, g.page_size, sorted(tried))

    worst = lambda res: max(r.per_chip_gib for r in res)  # noqa: E731
    if not _all_fit(at(row_pages), min_headroom):
        return search(0, [], float("nan"))
    if not _all_fit(at(2 * row_pages), min_headroom):
        return search(row_pages, tried[row_pages], float("nan"))
    page_gib = (worst(tried[2 * row_pages]) - worst(tried[row_pages])) / row_pages
    hbm = tried[row_pages][0].hbm_gib
    if hbm is None:
        raise FitError(f"--max-pages: {target.name} reports no memory size to fill")
    room = hbm * (1 - min_headroom / 100) - worst(tried[row_pages])
    pages = row_pages + int(room / page_gib) if page_gib > 0 else 2 * row_pages
    for _ in range(4):
        if pages <= 2 * row_pages or _all_fit(at(pages), min_headroom):
            break
        pages = int(pages * 0.95)
    best = max(p for p, res in tried.items() if _all_fit(res, min_headroom))
    return search(best, tried[best], page_gib)


def max_sampler_rows(cfg, target: Target, *, min_headroom: float = 10.0, preset: str | None = None,
                     say: Callable[[str], None] | None = None, known: Sequence[ProgramFit] = ()) -> RowsSearch:
    """The most decode rows (`grpo.sampler_rows`, in the sampler's row buckets: powers of two times the batch
    devices) whose sampler programs (`SAMPLER_PROGRAMS`, at the config's lengths, with what the loop keeps
    resident) all fit `target` with at least `min_headroom` percent free: compiled upward by doubling from the
    config's own rows while they fit, downward by halving while they do not; at most a step's rollouts
    (prompts_per_step x group_size). `known`: results already compiled at the config's own rows (reused)."""
    if not OBJECTIVES[cfg.method].rl:
        raise FitError(f"--max-rows: config method {cfg.method!r} has no sampler in its loop (grpo only)")
    g = cfg.grpo
    cap = g.prompts_per_step * g.group_size
    ok = functools.partial(_all_fit, min_headroom=min_headroom)
    tried: dict[int, list] = {}

    def at(rows: int) -> list:
        if rows not in tried:
            if rows == g.sampler_rows and known and all(r.program in SAMPLER_PROGRAMS for r in known):
                tried[rows] = list(known)
            else:
                c = copy.deepcopy(cfg)
                c.grpo.sampler_rows = rows
                (say or (lambda _m: None))(f"sampler rows {rows} ...")
                tried[rows] = check_config(c, target, preset=preset, say=say, programs=SAMPLER_PROGRAMS)
        return tried[rows]

    rows = min(g.sampler_rows, cap)
    if ok(at(rows)):
        while rows * 2 <= cap and ok(at(rows * 2)):
            rows *= 2
        up = rows * 2 if rows * 2 <= cap else None
        return RowsSearch(rows, tried[rows], up, tried.get(up), cap)
    while rows > 1 and not ok(at(rows // 2)):
        rows //= 2
    if rows == 1:
        return RowsSearch(0, [], 1, tried[1], cap)
    return RowsSearch(rows // 2, tried[rows // 2], rows, tried[rows], cap)


def check_inference(mcfg: qwen2.Qwen2Config, target: Target, *, prompts: int, samples: int, prompt_len: int,
                    new_tokens: int, max_rows: int = 256, score_len: int = 1024, score_tokens: int = 16384,
                    cfg_name: str = "inference", programs: Sequence[str] = ("score", "prefill", "insert", "decode"),
                    say: Callable[[str], None] | None = None) -> list[ProgramFit]:
    """Compiles what scoring and sampling run on a model loaded for inference (`hf.load_for_inference`: the
    parameters stored in the compute dtype, replicated over a (1, -1, 1) mesh of the target under
    `sharding.sample_rules()`), nothing else resident; one ProgramFit per program:

      * `score`: `selection.perplexity.score_batch` on its largest batch of `score_len`-token rows
        (`score_tokens` tokens per batch, as `score_file` batches them);
      * `prefill` / `insert` / `decode`: the (continuous) sampler's programs for `prompts` x `samples` rows (at
        most `max_rows` decode slots), prompts up to `prompt_len` tokens, `new_tokens` generated.
    """
    from exploresft_jax.sampling.strategies import SamplingConfig
    from exploresft_jax.selection.perplexity import make_batches, score_batch

    say = say or (lambda _msg: None)
    wanted = set(programs)
    mesh = shd.make_mesh((1, -1, 1), devices=target.devices)
    rules = shd.sample_rules()
    mcfg = mcfg.replace(param_dtype=mcfg.dtype)
    graphdef, params = nnx.split(qwen2.abstract_model(mcfg))
    params = _place(params, shd.state_shardings(params, mesh, rules))
    common = dict(cfg_name=cfg_name, target=target, mesh=mesh)
    notes = [f"attention={mcfg.attention}", f"parameters in {mcfg.dtype}, replicated"]
    results = []
    if "score" in wanted:
        multiple = shd.mesh_axes_size(mesh, rules.lookup("act_batch"))
        length, idx = make_batches([score_len] * 4096, max_batch_tokens=score_tokens, batch_multiple=multiple)[0]
        rows = max(multiple, -(-len(idx) // multiple) * multiple)
        data = shd.batch_sharding(mesh, rules, 2)
        sds = jax.ShapeDtypeStruct
        ids, valid = sds((rows, length), jnp.int32, sharding=data), sds((rows, length), bool, sharding=data)
        with shd.use_rules(mesh, rules):
            say(f"compiling score for {target.name} ...")
            compiled, secs, refusal = _compile(lambda: score_batch.lower(
                graphdef, params, ids, valid, ids, chunk_size=min(1024, length)), target.compiler_options)
        results.append(_result("score", compiled, secs, refusal, resident=0.0,
                               flops=forward_flops_per_token(mcfg, length / 2) * rows * length,
                               shapes={"tokens": [rows, length]}, notes=notes, **common))
    results += _sampler_programs(graphdef, params, mcfg, mesh, rules, samples=samples,
                                 max_rows=min(max_rows, prompts * samples), prompt_len=prompt_len,
                                 new_tokens=new_tokens, samp_cfg=SamplingConfig(temperature=1.0), resident=0.0,
                                 notes=notes, common=common, wanted=wanted, say=say, prompts=prompts)
    return results


SAMPLER_ENGINE_PROGRAMS = {"continuous": _continuous_programs, "static": _static_programs}


# --- reports ---------------------------------------------------------------------------------------------------
def format_rows_search(found: RowsSearch, topology: str, min_headroom: float) -> str:
    """One line: the most sampler rows that fit and what the next bucket asked for."""
    def worst(res):
        r = max(res, key=lambda r: r.per_chip_gib)
        return f"{r.program} {_fmt(r.per_chip_gib)} of {_fmt(r.hbm_gib)} GiB ({_fmt(r.headroom_pct, '.1f')}% free)"

    head = (f"most sampler rows on {topology} with >= {min_headroom:g}% free: {found.rows}"
            + (f" ({worst(found.fits)})" if found.fits else ""))
    if found.next_fits:
        head += f"; {found.next_rows} rows: {worst(found.next_fits)}"
    elif found.next_rows is None:
        head += f" (the step's {found.cap} rollouts: no larger batch is useful)"
    return head


def format_pages_search(found: PagesSearch, topology: str, min_headroom: float) -> str:
    """One line: the most KV pages per device that fit, in longest rows, and what a page costs."""
    if not found.pages:
        return f"no KV page pool on {topology} leaves {min_headroom:g}% free (one longest row: {found.row_pages} pages)"
    r = max(found.fits, key=lambda r: r.per_chip_gib)
    return (f"most KV pages per device on {topology} with >= {min_headroom:g}% free: {found.pages} of "
            f"{found.page_size} entries = {found.pages // found.row_pages} longest rows of {found.row_pages} pages "
            f"({r.program} {_fmt(r.per_chip_gib)} of {_fmt(r.hbm_gib)} GiB, {_fmt(r.headroom_pct, '.1f')}% free; "
            f"{_fmt(found.page_gib * 1024 ** 2, '.1f')} KiB per page per chip)")


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_results(results: Sequence[ProgramFit]) -> str:
    """A human-readable table of programs (GiB per chip)."""
    if not results:
        return ""
    r0 = results[0]
    mesh = " ".join(f"{k}={v}" for k, v in r0.mesh.items())
    hbm = f"{_fmt(r0.hbm_gib)} GiB per chip ({r0.hbm_source})"
    head = (f"{r0.config} on {r0.topology}: {r0.chips} x {r0.device_kind}, mesh {mesh}, HBM {hbm}\n"
            f"  {'; '.join(r0.notes[:3])}\n")
    cols = f"  {'program':13s} {'args':>7s} {'temp':>7s} {'resident':>8s} {'total':>7s} {'HBM':>7s} " \
           f"{'headroom':>8s} {'TFLOP':>9s}  {'fits':4s} {'compile':>8s}  attention"
    lines = [head + cols]
    for r in results:
        lines.append(f"  {r.program:13s} {_fmt(r.argument_gib):>7s} {_fmt(r.temp_gib):>7s} "
                     f"{_fmt(r.resident_gib):>8s} {_fmt(r.per_chip_gib):>7s} {_fmt(r.hbm_gib):>7s} "
                     f"{_fmt(r.headroom_pct, '.1f') + '%':>8s} {r.flops / 1e12:9.1f}  {'yes' if r.fits else 'NO':4s} "
                     f"{r.compile_s:7.1f}s  {'+'.join(r.kernels) or 'xla'}")
        if r.error:
            lines.append(f"    refused: {r.error[:300]}")
    return "\n".join(lines)


def markdown_table(grid: dict[tuple[str, str], list[ProgramFit] | str], configs: Sequence[str],
                   topologies: Sequence[str], own: dict[str, Sequence[str]] | None = None) -> str:
    """Markdown: one row per config, one column per target; each cell the largest per-chip GiB of the config's
    programs (and which program, when there are several) over the HBM, its headroom, and "fits" or "does not fit";
    a string cell is that cell's error, "-" not compiled. own: config -> its own targets (mesh.targets), in bold."""
    own = own or {}
    head = "| config | " + " | ".join(topologies) + " |"
    lines = [head, "|" + "---|" * (len(topologies) + 1)]
    for c in configs:
        cells = []
        for t in topologies:
            res = grid.get((c, t))
            if isinstance(res, str) or res is None:
                cells.append(res or "-")
                continue
            worst = max(res, key=lambda r: (not r.fits, r.per_chip_gib if not math.isnan(r.per_chip_gib) else 1e9))
            which = f" {worst.program}" if len(res) > 1 else ""
            if worst.fits:
                cell = f"{worst.per_chip_gib:.1f} / {worst.hbm_gib:.1f}{which} ({worst.headroom_pct:.0f}% free)"
            else:
                cell = f"{_fmt(worst.per_chip_gib, '.1f')} / {_fmt(worst.hbm_gib, '.1f')}{which}, does not fit"
            cells.append(f"**{cell}**" if t in own.get(c, ()) else cell)
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- configs ---------------------------------------------------------------------------------------------------
def mesh_for(cfg, chips: int):
    """(cfg, note): `cfg` itself when its mesh.shape fits `chips` devices, else a copy with FSDP over all of them
    and the config's tensor-parallel degree kept where it divides the count (mesh (1, -1, t)), and a note saying
    so. For comparing a config on targets other than its own (`scripts/fit.py --table`)."""
    try:
        shd.mesh_shape(tuple(cfg.mesh.shape), chips)
        return cfg, None
    except ValueError:
        pass
    tensor = int(cfg.mesh.shape[2]) if int(cfg.mesh.shape[2]) > 0 and chips % int(cfg.mesh.shape[2]) == 0 else 1
    sub = copy.deepcopy(cfg)
    sub.unlock()
    sub.mesh.shape = (1, -1, tensor)
    return sub, f"mesh {tuple(cfg.mesh.shape)} -> (1, -1, {tensor}) for {chips} chips"


def load_config(path: str, overrides: Sequence[str] = ()):
    """An ml_collections config from a configs/*.py file plus `--config.a.b=value` overrides (as train.py)."""
    from exploresft_jax.configs.loader import load_config as load

    if not Path(path).is_file():
        raise FitError(f"--config {path}: file not found")
    try:
        return load(path, overrides)
    except ValueError as e:
        raise FitError(str(e)) from None
