"""HuggingFace checkpoint import and export for the decoder (Qwen2 / Qwen2.5, Qwen3 and Llama 3 checkpoints).

Import reads safetensors files through read-only memory maps and builds every parameter with
`jax.make_array_from_callback`, so each device receives only its own shard and no full copy of the model is
staged on one device. One file, several files with `model.safetensors.index.json`, and bf16 / fp16 / fp32
tensors are supported; tied models have no `lm_head.weight`.

Export writes `config.json`, sharded `*.safetensors` (+ index), `generation_config.json` and tokenizer files
into a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from exploresft_jax import sharding as shd
from exploresft_jax.models import lora
from exploresft_jax.models.qwen2 import Qwen2, Qwen2Config, abstract_model, dtype_of

_ST_DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json")


# --- safetensors, memory-mapped -----------------------------------------------------------------------------------
def _read_header(path: Path) -> tuple[dict, int]:
    """(tensor entries, data offset) of a safetensors file; its `__metadata__` is `header_metadata`'s."""
    header, start = _read_raw_header(path)
    header.pop("__metadata__", None)
    return header, start


def header_metadata(path: Path) -> dict:
    """The `__metadata__` strings of a safetensors file ({} without)."""
    return dict(_read_raw_header(path)[0].get("__metadata__") or {})


def _read_raw_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 2**20:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    return header, 8 + n


class SafetensorsFolder:
    """Name -> read-only numpy memmap over every safetensors file of a HuggingFace folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index}: cannot read weight_map ({e})") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.folder}: no *.safetensors files")
        self._entries: dict[str, tuple[Path, dict, int]] = {}
        for name in files:
            path = self.folder / name
            if not path.exists():
                raise FileNotFoundError(f"{path}: listed in the index but missing")
            header, offset = _read_header(path)
            for key, meta in header.items():
                self._entries[key] = (path, meta, offset)
        self._maps: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def keys(self):
        return self._entries.keys()

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(_ST_DTYPES[self._entries[name][1]["dtype"]])

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._maps:
            if name not in self._entries:
                raise KeyError(f"{self.folder}: tensor {name!r} not found")
            path, meta, offset = self._entries[name]
            if meta["dtype"] not in _ST_DTYPES:
                raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {meta['dtype']}")
            start, end = meta["data_offsets"]
            shape = tuple(meta["shape"])
            dtype = np.dtype(_ST_DTYPES[meta["dtype"]])
            if end - start != int(np.prod(shape)) * dtype.itemsize:
                raise ValueError(f"{path}: tensor {name!r} byte range does not match shape {shape}")
            self._maps[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset + start, shape=shape)
        return self._maps[name]


def save_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None):
    """Writes a safetensors file (any numpy / ml_dtypes dtype listed in the format), tensors in key order."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    arrays = {}
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _ST_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be stored in safetensors")
        header[name] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays[name] = a
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data must start 8-byte aligned
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(arrays):
            f.write(arrays[name].tobytes())
    tmp.replace(path)  # never leave a half-written file under the final name


# --- Parameter <-> HF tensor mapping --------------------------------------------------------------------------------
# Per-layer transforms between an HF tensor (torch [out, in] layout) and ours. `to_ours` may return a view.
def _qkv_kernel(heads_attr):
    def to_ours(w, cfg):  # [n*H, D] -> [D, n, H]
        n = getattr(cfg, heads_attr)
        return w.reshape(n, cfg.head_dim, cfg.hidden_size).transpose(2, 0, 1)

    def to_hf(w, cfg):  # [D, n, H] -> [n*H, D]
        return w.transpose(1, 2, 0).reshape(-1, cfg.hidden_size)

    return to_ours, to_hf


def _qkv_bias(heads_attr):
    return (lambda b, cfg: b.reshape(getattr(cfg, heads_attr), cfg.head_dim)), (lambda b, cfg: b.reshape(-1))


_LAYER_MAP: dict[str, tuple[str, Callable, Callable]] = {
    "input_norm": ("input_layernorm.weight", lambda w, c: w, lambda w, c: w),
    "post_attn_norm": ("post_attention_layernorm.weight", lambda w, c: w, lambda w, c: w),
    "q_kernel": ("self_attn.q_proj.weight", *_qkv_kernel("num_heads")),
    "k_kernel": ("self_attn.k_proj.weight", *_qkv_kernel("num_kv_heads")),
    "v_kernel": ("self_attn.v_proj.weight", *_qkv_kernel("num_kv_heads")),
    "q_bias": ("self_attn.q_proj.bias", *_qkv_bias("num_heads")),
    "k_bias": ("self_attn.k_proj.bias", *_qkv_bias("num_kv_heads")),
    "v_bias": ("self_attn.v_proj.bias", *_qkv_bias("num_kv_heads")),
    "q_norm": ("self_attn.q_norm.weight", lambda w, c: w, lambda w, c: w),  # qwen3: RMSNorm over head_dim
    "k_norm": ("self_attn.k_norm.weight", lambda w, c: w, lambda w, c: w),
    # o_proj [D, N*H] -> [N, H, D]
    "o_kernel": ("self_attn.o_proj.weight",
                 lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
                 lambda w, c: w.reshape(-1, c.hidden_size).T),
    "gate_kernel": ("mlp.gate_proj.weight", lambda w, c: w.T, lambda w, c: w.T),
    "up_kernel": ("mlp.up_proj.weight", lambda w, c: w.T, lambda w, c: w.T),
    "down_kernel": ("mlp.down_proj.weight", lambda w, c: w.T, lambda w, c: w.T),
}
_TOP_MAP = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}


def _path_name(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def load_hf_config(folder: str | Path, **overrides) -> tuple[Qwen2Config, dict]:
    """(our config, the raw config.json dict) for a HuggingFace folder; for a PEFT adapter folder (see
    `read_adapter`), its base model's config with the adapter's LoRA settings."""
    adapter = read_adapter(folder)
    if adapter is not None:
        return load_hf_config(adapter.base, **{"lora": adapter.spec, **overrides})
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no config.json (expected a HuggingFace model folder)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    return Qwen2Config.from_hf_config(raw, **overrides), raw


def load_hf_model(folder: str | Path, *, mesh=None, rules=None, seed: int = 0, **config_overrides) -> Qwen2:
    """Loads a HuggingFace Qwen2 / Qwen3 / Llama folder into a `Qwen2` model placed in the rules' shardings on
    `mesh` (the family from config.json).

    config_overrides (e.g. dtype='float32', param_dtype='bfloat16', remat_policy='full', lora=LoraSpec(...)) adjust
    the config read from config.json. With LoRA the checkpoint is the frozen base (stored in lora.base_dtype;
    quantized one weight at a time, so the full-precision model never exists whole on a device) and the adapters
    are freshly initialised from `seed` (B = 0: the model computes what the checkpoint does, up to quantization).
    Without a mesh, everything is placed on the default device.
    """
    adapter = read_adapter(folder)
    cfg, _ = load_hf_config(folder, **config_overrides)
    files = SafetensorsFolder(folder if adapter is None else adapter.base)
    graphdef, abstract_state = nnx.split(abstract_model(cfg))
    if mesh is None:
        mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    rules = rules or shd.TRAIN_RULES
    shardings = shd.state_shardings(abstract_state, mesh, rules)
    spec = cfg.lora_spec
    # the checkpoint's own (unquantized) shapes and placements, for weights stored quantized
    dense_state = nnx.split(abstract_model(cfg.replace(lora=None)))[1]
    dense = {_base_name(p): (leaf, sh) for (p, leaf), sh in zip(
        jax.tree_util.tree_flatten_with_path(dense_state)[0],
        jax.tree.leaves(shd.state_shardings(dense_state, mesh, rules)))}

    def source(names: tuple[str, ...], dtype) -> Callable[[tuple], np.ndarray]:
        if names[0] == "layers":
            hf_suffix, to_ours, _ = _LAYER_MAP[names[1]]
            layer_tensors = []
            for i in range(cfg.num_layers):
                key = f"model.layers.{i}.{hf_suffix}"
                if key not in files:
                    raise KeyError(f"{folder}: missing tensor {key}")
                layer_tensors.append(key)

            def read(index):
                lsl, rest = index[0], index[1:]
                layers = range(*lsl.indices(cfg.num_layers))
                return np.stack([np.asarray(to_ours(files[layer_tensors[i]], cfg)[rest], dtype) for i in layers])

            return read
        key = _TOP_MAP[names[0]]
        if key not in files:
            if names[0] == "lm_head":
                raise KeyError(f"{folder}: config says untied embeddings but there is no lm_head.weight")
            raise KeyError(f"{folder}: missing tensor {key}")
        return lambda index: np.asarray(files[key][index], dtype)

    quantized: dict[tuple[str, ...], tuple[jax.Array, jax.Array]] = {}

    def quantize(names, codes_sh, scale_sh):  # (codes, scale) of one weight, read in float32 and quantized
        if names not in quantized:
            leaf, sh = dense[names]
            w = jax.make_array_from_callback(leaf.shape, sh, source(names, np.float32))
            quantized[names] = jax.jit(functools.partial(lora.quantize, mode=spec.base_dtype),
                                       out_shardings=(codes_sh, scale_sh))(w)
        return quantized[names]

    flat = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    by_name = {_base_name(p): (leaf, sh) for (p, leaf), sh in zip(flat, jax.tree.leaves(shardings))}
    key = jax.random.key(seed)
    arrays = []
    for i, ((path, leaf), sharding) in enumerate(zip(flat, jax.tree.leaves(shardings))):
        names = _base_name(path)
        last = names[-1]
        if last.endswith(("_lora_a", "_lora_b")) and adapter is not None:
            read = adapter.reader(last, cfg.num_layers, leaf.shape[1:], leaf.dtype)
            arrays.append(jax.make_array_from_callback(leaf.shape, sharding, read))
        elif last.endswith(("_lora_a", "_lora_b")):
            init = functools.partial(lora.init_adapter, shape=leaf.shape, which=last[-1], dtype=leaf.dtype)
            arrays.append(jax.jit(init, out_shardings=sharding)(jax.random.fold_in(key, i)))
        elif last.endswith("_scale"):
            base = (*names[:-1], last[:-len("_scale")])
            arrays.append(quantize(base, by_name[base][1], sharding)[1])
        elif (*names[:-1], f"{last}_scale") in by_name:
            arrays.append(quantize(names, sharding, by_name[(*names[:-1], f"{last}_scale")][1])[0])
        else:
            arrays.append(jax.make_array_from_callback(leaf.shape, sharding, source(names, np.dtype(leaf.dtype))))
    state = jax.tree_util.tree_unflatten(jax.tree.structure(abstract_state), arrays)
    return nnx.merge(graphdef, state)


def _base_name(path) -> tuple[str, ...]:
    """A state leaf's path as names, without nnx's trailing 'value'."""
    names = _path_name(path)
    return names[:-1] if names[-1] == "value" else names


def load_for_inference(folder: str | Path, *, dtype: str | None = None, tensor_parallel: int = 1,
                       attention: str = "auto"):
    """(model, mesh, rules) for scoring and sampling: every device in a (1, -1, tensor_parallel) mesh, parameters
    replicated (or sharded over 'tensor'), stored and computed in `dtype` (default: the checkpoint's own), with
    the attention backend `attention` (see models/attention.py)."""
    overrides = {"attention": attention} if dtype is None else {"dtype": dtype, "attention": attention}
    cfg, _ = load_hf_config(folder, **overrides)
    mesh = shd.make_mesh((1, -1, tensor_parallel))
    rules = shd.sample_rules(tensor_parallel=tensor_parallel > 1)
    model = load_hf_model(folder, mesh=mesh, rules=rules, param_dtype=cfg.dtype, **overrides)
    return model, mesh, rules


def _host_array(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def hf_state_dict(model: Qwen2, dtype: str = "bfloat16") -> dict[str, np.ndarray]:
    """Our parameters as HuggingFace tensors (torch layout) in `dtype`, on the host; a LoRA model's adapters merged
    into its (dequantized) base."""
    cfg = model.config
    np_dtype = np.dtype(dtype_of(dtype))
    out = {_TOP_MAP["embed"]: _host_array(model.embed[...]).astype(np_dtype),
           _TOP_MAP["final_norm"]: _host_array(model.final_norm[...]).astype(np_dtype)}
    if not cfg.tie_word_embeddings:
        out[_TOP_MAP["lm_head"]] = _host_array(model.lm_head[...]).astype(np_dtype)
    for name in model.layers.param_names:
        hf_suffix, _, to_hf = _LAYER_MAP[name]
        stacked = _host_array(model.layers.dense(name, cfg))  # dequantized, LoRA merged
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.{hf_suffix}"] = np.ascontiguousarray(to_hf(stacked[i], cfg)).astype(np_dtype)
    return out


def export_hf(model: Qwen2, folder: str | Path, *, dtype: str = "bfloat16", tokenizer=None,
              tokenizer_dir: str | Path | None = None, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Writes `model` as a HuggingFace folder loadable by `AutoModelForCausalLM.from_pretrained`.

    dtype: stored tensor dtype. tokenizer: a transformers tokenizer to save, or tokenizer_dir: a folder whose
    tokenizer / generation files are copied. Only process 0 writes in multi-host runs.
    """
    folder = Path(folder)
    tensors = hf_state_dict(model, dtype)
    if jax.process_index() != 0:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_hf_config(dtype), indent=2) + "\n")
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    for old in folder.glob("model*.safetensors*"):
        old.unlink()
    if len(shards) == 1:
        save_safetensors(folder / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_safetensors(folder / fname, shard)
            weight_map.update({k: fname for k in shard})
        total = sum(t.nbytes for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.exists() and src.resolve() != (folder / name).resolve():
                shutil.copy2(src, folder / name)
    return folder


# --- PEFT adapters ----------------------------------------------------------------------------------------------------
PEFT_PREFIX = "base_model.model.model.layers"


def peft_state_dict(model: Qwen2) -> dict[str, np.ndarray]:
    """The LoRA adapters in PEFT's layout (float32, torch [out, in] convention): per layer and target,
    `<prefix>.{i}.<module>.lora_A.weight` [rank, in_features] and `lora_B.weight` [out_features, rank]."""
    spec = model.config.lora_spec
    if spec is None:
        raise ValueError("the model has no LoRA adapters (model.lora.rank = 0)")
    out = {}
    for t in spec.targets:
        proj = lora.PROJECTIONS[t]
        a, b = (_host_array(getattr(model.layers, n)[...]).astype(np.float32) for n in lora.adapter_names(t))
        for i in range(model.config.num_layers):
            out[f"{PEFT_PREFIX}.{i}.{proj.hf_module}.lora_A.weight"] = np.ascontiguousarray(
                a[i].reshape(-1, spec.rank).T)  # [*in, r] -> [r, in]: inputs flattened as HF's (heads, head_dim)
            out[f"{PEFT_PREFIX}.{i}.{proj.hf_module}.lora_B.weight"] = np.ascontiguousarray(
                b[i].reshape(spec.rank, -1).T)  # [r, *out] -> [out, r]
    return out


def export_peft_adapter(model: Qwen2, folder: str | Path, *, base_model: str = "") -> Path:
    """Writes the model's LoRA adapters as a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`) that
    `peft.PeftModel.from_pretrained(base, folder)` loads onto the base checkpoint `base_model` (the run's
    model.path). With a quantized base, the adapters were trained against its dequantized weights; the merged
    export (`export_hf`) holds exactly those. Only process 0 writes."""
    folder = Path(folder)
    tensors = peft_state_dict(model)
    if jax.process_index() != 0:
        return folder
    spec = model.config.lora_spec
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model or None,
        "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "target_modules": sorted(lora.PROJECTIONS[t].hf_module.split(".")[-1] for t in spec.targets),
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_safetensors(folder / "adapter_model.safetensors", tensors,
                     metadata={"format": "pt", "base_dtype": spec.base_dtype})
    return folder


_MODULE_TARGETS = {p.hf_module.split(".")[-1]: t for t, p in lora.PROJECTIONS.items()}


@dataclasses.dataclass(frozen=True)
class Adapter:
    """A PEFT LoRA folder over a local base checkpoint: `base` (the base's HF folder), `spec` (rank, alpha, targets,
    the base dtype it was trained against) and its tensors."""

    folder: Path
    base: Path
    spec: lora.LoraSpec
    tensors: SafetensorsFolder

    def reader(self, name: str, num_layers: int, shape: tuple[int, ...], dtype) -> Callable[[tuple], np.ndarray]:
        """make_array_from_callback reader of our stacked adapter `name` (<t>_lora_a / <t>_lora_b; one layer's
        `shape`) from PEFT's per-layer lora_A [r, in] / lora_B [out, r] tensors."""
        t, which = name[:-len("_lora_a")], name[-1]
        proj = lora.PROJECTIONS[t]
        suffix = "lora_A" if which == "a" else "lora_B"
        keys = [f"{PEFT_PREFIX}.{i}.{proj.hf_module}.{suffix}.weight" for i in range(num_layers)]
        missing = [k for k in keys if k not in self.tensors]
        if missing:
            raise KeyError(f"{self.folder}: missing adapter tensor {missing[0]}")

        def read(index):
            layers = range(*index[0].indices(num_layers))
            return np.stack([np.asarray(self.tensors[keys[i]], np.float32).T.reshape(shape)[index[1:]]
                             for i in layers]).astype(dtype)

        return read


def read_adapter(folder: str | Path) -> Adapter | None:
    """The PEFT LoRA adapter in `folder` (adapter_config.json and adapter_model.safetensors, no config.json; as
    `export_peft_adapter` writes it), or None for a model folder. Its base is `base_model_name_or_path`, which must
    be a local HuggingFace folder."""
    folder = Path(folder)
    conf_path = folder / "adapter_config.json"
    if (folder / "config.json").exists() or not conf_path.exists():
        return None
    try:
        conf = json.loads(conf_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{conf_path}: invalid JSON ({e})") from None
    if conf.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{conf_path}: peft_type={conf.get('peft_type')!r}; only LORA adapters are supported")
    base = conf.get("base_model_name_or_path") or ""
    if not (Path(base) / "config.json").exists():
        raise ValueError(f"{conf_path}: base_model_name_or_path={base!r} is not a local HuggingFace model folder")
    modules = conf.get("target_modules") or []
    unknown = [m for m in modules if m not in _MODULE_TARGETS]
    if unknown or not modules or conf.get("use_dora") or conf.get("use_rslora"):
        raise ValueError(f"{conf_path}: target_modules={modules!r} (use_dora / use_rslora off) expected among "
                         f"{sorted(_MODULE_TARGETS)}")
    tensors = SafetensorsFolder(folder)
    base_dtype = header_metadata(folder / "adapter_model.safetensors").get("base_dtype", "bfloat16")
    spec = lora.LoraSpec(rank=int(conf["r"]), alpha=float(conf["lora_alpha"]),
                         targets=tuple(_MODULE_TARGETS[m] for m in modules), base_dtype=base_dtype)
    return Adapter(folder, Path(base), spec, tensors)

