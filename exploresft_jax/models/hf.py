"""HuggingFace checkpoint import and export for the decoder (Qwen2 / Qwen2.5, Qwen3 and Llama 3 checkpoints).

Import reads safetensors files through read-only memory maps and builds every parameter with
`jax.make_array_from_callback`, so each device receives only its own shard and no full copy of the model is
staged on one device. One file, several files with `model.safetensors.index.json`, and bf16 / fp16 / fp32
tensors are supported; tied models have no `lm_head.weight`.

Export writes `config.json`, sharded `*.safetensors` (+ index), `generation_config.json` and tokenizer files
into a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

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
from exploresft_jax.models.qwen2 import Qwen2, Qwen2Config, abstract_model, dtype_of

_ST_DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json")


# --- safetensors, memory-mapped -----------------------------------------------------------------------------------
def _read_header(path: Path) -> tuple[dict, int]:
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
    header.pop("__metadata__", None)
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
    """(our config, the raw config.json dict) for a HuggingFace folder."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no config.json (expected a HuggingFace model folder)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    return Qwen2Config.from_hf_config(raw, **overrides), raw


def load_hf_model(folder: str | Path, *, mesh=None, rules=None, **config_overrides) -> Qwen2:
    """Loads a HuggingFace Qwen2 / Qwen3 / Llama folder into a `Qwen2` model placed in the rules' shardings on
    `mesh` (the family from config.json).

    config_overrides (e.g. dtype='float32', param_dtype='bfloat16', remat_policy='full') adjust the config read
    from config.json. Without a mesh, everything is placed on the default device.
    """
    cfg, _ = load_hf_config(folder, **config_overrides)
    files = SafetensorsFolder(folder)
    graphdef, abstract_state = nnx.split(abstract_model(cfg))
    if mesh is None:
        mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    shardings = shd.state_shardings(abstract_state, mesh, rules or shd.TRAIN_RULES)
    param_dtype = np.dtype(dtype_of(cfg.param_dtype))

    def source(path) -> Callable[[tuple], np.ndarray]:
        names = _path_name(path)
        names = names[:-1] if names[-1] == "value" else names
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
                return np.stack([np.asarray(to_ours(files[layer_tensors[i]], cfg)[rest], param_dtype)
                                 for i in layers])

            return read
        key = _TOP_MAP[names[0]]
        if key not in files:
            if names[0] == "lm_head":
                raise KeyError(f"{folder}: config says untied embeddings but there is no lm_head.weight")
            raise KeyError(f"{folder}: missing tensor {key}")
        return lambda index: np.asarray(files[key][index], param_dtype)

    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    sh_leaves = jax.tree.leaves(shardings)
    arrays = []
    for (path, leaf), sharding in zip(leaves, sh_leaves):
        read = source(path)
        arrays.append(jax.make_array_from_callback(leaf.shape, sharding, read))
    state = jax.tree_util.tree_unflatten(treedef, arrays)
    return nnx.merge(graphdef, state)


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
    """Our parameters as HuggingFace tensors (torch layout) in `dtype`, on the host."""
    cfg = model.config
    np_dtype = np.dtype(dtype_of(dtype))
    out = {_TOP_MAP["embed"]: _host_array(model.embed[...]).astype(np_dtype),
           _TOP_MAP["final_norm"]: _host_array(model.final_norm[...]).astype(np_dtype)}
    if not cfg.tie_word_embeddings:
        out[_TOP_MAP["lm_head"]] = _host_array(model.lm_head[...]).astype(np_dtype)
    for name in model.layers.param_names:
        hf_suffix, _, to_hf = _LAYER_MAP[name]
        stacked = _host_array(getattr(model.layers, name)[...])
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
