"""Jitted KV-cache sampler for the Qwen2 model: prefill once per prompt, decode n samples per prompt.

Two engines behind the same `Sampler.generate`:

* "continuous" (default): a fixed number of decode slots refilled with the next queued sample as soon as a
  sample ends, per-slot cache indices, decode attention over the filled part of the cache only; see
  `exploresft_jax.sampling.continuous`.
* "static" (below): batches of whole prompts decoded until their longest row ends.

Flow of one static batch (`Sampler.generate` splits the prompts into batches):

1. Prompts are left-padded to a bucketed length Lp (a power of two, >= `min_prompt_bucket`), so every row
   writes its next token at the same cache slot; RoPE positions are per row (0 at each prompt's first token).
2. `prefill` (jit) runs the P prompts once into a dense cache of Lp + max_new slots, then gathers each
   prompt's cache slice and last hidden state to its n rows (prompt-major), and samples the first token.
3. `decode` (jit, the state donated) is one `lax.while_loop` that feeds the previous token, samples the next
   and stops as soon as every row has emitted a stop id or reached its own token limit (at most max_new).

Batch rows are padded to a power of two that the batch-sharding devices divide (padding rows start finished),
so the number of compiled shapes stays small: one per (rows bucket, prompt bucket, max_new, strategy).
Each row draws its randomness from `fold_in(fold_in(key, global_row), step)` (global_row = prompt * n +
sample), so a row's sample does not depend on how rows are batched or sharded, nor on the engine.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exploresft_jax import sharding as shd
from exploresft_jax.models import qwen2
from exploresft_jax.models.qwen2 import KVCache, dtype_of
from exploresft_jax.sampling.buckets import next_pow2
from exploresft_jax.sampling.continuous import MIN_WINDOW, run_continuous
from exploresft_jax.sampling.strategies import SamplingConfig, sample_tokens

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
ENGINES = ("continuous", "static")


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Generated continuations, rows prompt-major (prompt 0's n samples first).

    tokens:        [R, max_new] int32; `pad_id` after a row's stop token (the stop token itself is kept);
                   max_new is the largest of the rows' limits when `max_new_tokens` is per row.
    logprobs:      [R, max_new] float32; log-prob (nats) of each token under softmax(logits / temperature)
                   over the full vocabulary (temperature 1 for greedy); 0 after the row's end.
    entropy:       [R, max_new] float32; entropy (nats) of that same distribution; 0 after the row's end.
    lengths:       [R] int32; generated tokens, the stop token included.
    finish_reason: [R] str; "stop" (a stop id was emitted) or "length" (the row's token limit reached).
    prompt_index:  [R] int32; the prompt each row continues.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    entropy: np.ndarray
    lengths: np.ndarray
    finish_reason: np.ndarray
    prompt_index: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """[R, max_new] bool: True on generated tokens (up to and including the stop token)."""
        return np.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]

    @property
    def sum_logprob(self) -> np.ndarray:
        """[R] float32: summed token log-probs of each row."""
        return self.logprobs.sum(axis=1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """The decode loop's carry (donated between the two jits).

    cache: KVCache with B rows; last: [B] int32 token fed next; pos: [B] int32 its RoPE position;
    step: [] int32 tokens sampled so far; done: [B] bool; stopped: [B] bool (ended on a stop id);
    length: [B] int32; tokens/logprobs/entropy: [B, max_new]; row_keys: [B] typed PRNG keys;
    limit: [B] int32 each row's token limit (<= max_new).
    """

    cache: KVCache
    last: jax.Array
    pos: jax.Array
    step: jax.Array
    done: jax.Array
    stopped: jax.Array
    length: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    entropy: jax.Array
    row_keys: jax.Array
    limit: jax.Array


def _record(st: DecodeState, hidden: jax.Array, model: qwen2.Qwen2, stop_ids: jax.Array, cfg: SamplingConfig,
            pad_id: int, head_t=None) -> DecodeState:
    """Samples the token at column `st.step` from hidden [B, D] and writes it (pad once a row is done).
    head_t: `DecodeWeights.head_t`."""
    logits = model.step_logits(hidden, head_t)
    keys = jax.vmap(jax.random.fold_in, (0, None))(st.row_keys, st.step)
    tok, logp, ent = sample_tokens(logits, keys, cfg)
    live = ~st.done
    tok = jnp.where(live, tok, pad_id)
    logp = jnp.where(live, logp, 0.0)
    ent = jnp.where(live, ent, 0.0)
    hit = live & jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
    length = st.length + live.astype(jnp.int32)
    col = st.step
    return dataclasses.replace(
        st,
        last=tok,
        step=st.step + 1,
        done=st.done | hit | (length >= st.limit),
        stopped=st.stopped | hit,
        length=length,
        tokens=jax.lax.dynamic_update_slice_in_dim(st.tokens, tok[:, None], col, axis=1),
        logprobs=jax.lax.dynamic_update_slice_in_dim(st.logprobs, logp[:, None], col, axis=1),
        entropy=jax.lax.dynamic_update_slice_in_dim(st.entropy, ent[:, None], col, axis=1),
    )


def constrain_state(st: DecodeState) -> DecodeState:
    """Pins every per-row array of the carry to the batch sharding (a no-op outside `use_rules`)."""
    c = st.cache
    cache = KVCache(k=shd.constrain(c.k, KVCache.AXES), v=shd.constrain(c.v, KVCache.AXES),
                    valid=shd.constrain(c.valid, ("act_batch", None)), index=c.index)
    row = lambda x: shd.constrain(x, ("act_batch",) + (None,) * (x.ndim - 1))  # noqa: E731
    return dataclasses.replace(st, cache=cache, last=row(st.last), pos=row(st.pos), done=row(st.done),
                               stopped=row(st.stopped), length=row(st.length), tokens=row(st.tokens),
                               logprobs=row(st.logprobs), entropy=row(st.entropy), limit=row(st.limit))


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "max_new", "cache_dtype", "pad_id"))
def prefill(graphdef, params, prompts, prompt_mask, row_src, row_live, row_ids, key, stop_ids, row_limit=None, *,
            cfg: SamplingConfig, max_new: int, cache_dtype, pad_id: int,
            weights: qwen2.DecodeWeights = qwen2.DecodeWeights()) -> DecodeState:
    """Runs the prompts once and samples each row's first token.

    prompts/prompt_mask: [P, Lp] int32 / bool, left-padded. row_src: [B] int32 prompt of each decode row;
    row_live: [B] bool (False on padding rows); row_ids: [B] int32 global row ids (randomness);
    key: a typed PRNG key; stop_ids: [n_stop] int32 (-1 = unused slot); row_limit: [B] int32 per-row token
    limits (<= max_new; None: max_new for every row). weights: the sampler's decode copies
    (`Sampler.decode_weights`; a None field: read from params). Returns the decode state.
    """
    model = nnx.merge(graphdef, params)
    p, lp = prompts.shape
    b = row_src.shape[0]
    positions = jnp.clip(jnp.cumsum(prompt_mask.astype(jnp.int32), axis=1) - 1, 0)
    # The prompts run into a prompt-length cache [L, P, K, Lp, H]; each prompt's entries are then written into its
    # n rows of the decode cache (no second prefill). The full-length buffer [L, B, K, Lp + max_new, H] exists
    # once: zeros updated in place, never a P-row full-length cache gathered into a B-row copy.
    pcache = KVCache.zeros(model.config, p, lp, cache_dtype)
    hidden, pcache = model.decode(prompts, positions, pcache, attn_mask=prompt_mask, cache_is_empty=True,
                                  layers=weights.layers)
    full = KVCache.zeros(model.config, b, lp + max_new, cache_dtype)
    put = lambda dst, src: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
        shd.constrain(dst, KVCache.AXES), shd.constrain(src[:, row_src], KVCache.AXES), 0, axis=3)
    cache = KVCache(k=put(full.k, pcache.k), v=put(full.v, pcache.v),
                    valid=jax.lax.dynamic_update_slice_in_dim(full.valid, pcache.valid[row_src], 0, axis=1),
                    index=pcache.index)
    st = DecodeState(
        cache=cache,
        last=jnp.zeros((b,), jnp.int32),
        pos=jnp.sum(prompt_mask, axis=1).astype(jnp.int32)[row_src],
        step=jnp.zeros((), jnp.int32),
        done=~row_live,
        stopped=jnp.zeros((b,), bool),
        length=jnp.zeros((b,), jnp.int32),
        tokens=jnp.full((b, max_new), pad_id, jnp.int32),
        logprobs=jnp.zeros((b, max_new), jnp.float32),
        entropy=jnp.zeros((b, max_new), jnp.float32),
        row_keys=jax.vmap(jax.random.fold_in, (None, 0))(key, row_ids),
        limit=(jnp.full((b,), max_new, jnp.int32) if row_limit is None
               else jnp.minimum(row_limit.astype(jnp.int32), max_new)),
    )
    st = constrain_state(st)
    return _record(st, hidden[:, -1][row_src], model, stop_ids, cfg, pad_id, weights.head_t)


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "pad_id"), donate_argnums=(2,))
def decode(graphdef, params, st: DecodeState, stop_ids, *, cfg: SamplingConfig, pad_id: int,
           weights: qwen2.DecodeWeights = qwen2.DecodeWeights()) -> DecodeState:
    """Decodes until every row is done or the token buffer [B, max_new] is full. The state is donated.
    weights: as in `prefill`."""
    model = nnx.merge(graphdef, params)
    max_new = st.tokens.shape[1]

    def cond(s: DecodeState):
        return (s.step < max_new) & ~jnp.all(s.done)

    def body(s: DecodeState):
        b = s.last.shape[0]
        hidden, cache = model.decode(s.last[:, None], s.pos[:, None], s.cache, attn_mask=jnp.ones((b, 1), bool),
                                     layers=weights.layers)
        s = dataclasses.replace(s, cache=cache, pos=s.pos + 1)
        return constrain_state(_record(s, hidden[:, 0], model, stop_ids, cfg, pad_id, weights.head_t))

    return jax.lax.while_loop(cond, body, st)


def cast_weights(params, dtype, lora_spec=None):
    """The sampler's copy of `params` (an nnx.State) with every floating `nnx.Param` in `dtype` (e.g. a float32
    master copy to the bfloat16 compute dtype). Exact for a model whose compute dtype is `dtype`: every weight is
    cast to the compute dtype before use (kernels, biases, norms, embedding, head), so the copy gives the same
    tokens and log-probs while decode reads half the bytes per step and the copy takes half the memory. LoRA runs
    (`lora_spec` set) are returned unchanged: their base is already stored in its own dtype and the adapters and
    quantization scales enter float32 arithmetic."""
    if dtype is None or lora_spec is not None:
        return params
    dt = dtype_of(dtype)

    def one(v):
        x = v.get_value()
        if type(v) is nnx.Param and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dt:
            return v.replace(x.astype(dt) if isinstance(x, jax.Array) else jax.ShapeDtypeStruct(x.shape, dt))
        return v

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


@functools.partial(jax.jit, static_argnames=("graphdef", "layers", "head"))
def _decode_copies(graphdef, params, *, layers: bool, head: bool) -> qwen2.DecodeWeights:
    return qwen2.decode_weights(nnx.merge(graphdef, params), layers=layers, head=head)


def _hollow_layers(params, empty: Callable | None = None):
    """params with each stacked layer array replaced by an empty one of its dtype: `nnx.merge` still builds the
    model, whose decode paths then read `decode_weights.layers` only (an access to the stacked ones fails on its
    shape). empty: dtype -> the [0] leaf (default a concrete array; `scripts/fit.py` passes placed
    ShapeDtypeStructs)."""
    empty = empty or (lambda dtype: jnp.zeros((0,), dtype))
    params = jax.tree.map(lambda x: x, params)  # a new State: the caller's keeps its arrays
    for name, var in params["layers"].items():
        params["layers"][name] = var.replace(empty(var.dtype))
    return params


def _as_key(key) -> jax.Array:
    """An int seed, a typed key, or a raw uint32[2] key -> a typed PRNG key."""
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key.astype(jnp.uint32))


class Sampler:
    """Samples continuations of token-id prompts from a `Qwen2` model (see the module docstring).

    model: a `Qwen2` (split once here), or pass `graphdef=` and `params=` from `nnx.split(model)`.
    mesh/rules: where to run (default: all devices, `sharding.sample_rules()`: parameters replicated, the
      batch over every device). Parameters are moved to the rules' shardings once, here.
    cache_dtype: KV-cache dtype (default bfloat16; use float32 for exact parity with a float32 model).
    max_rows: decode rows per batch, or decode slots of the continuous engine (memory knob: the cache holds
      max_rows x (Lp + max_new) positions; the continuous engine adds a pool of max_rows / n prompt caches).
    min_prompt_bucket: the smallest padded prompt length; prompts pad to powers of two above it.
    pad_id: the id written after a row's stop token.
    weight_dtype: dtype of the sampler's parameter copy (`cast_weights`; None keeps the given dtypes). Pass the
      model's compute dtype when sampling from a float32 master copy: same results, half the weight bytes.
    engine: "continuous" (slots refilled as samples end; `sampling.continuous`) or "static" (whole batches
      decoded until their longest row ends). Both give the same tokens for the same key.
    decode_chunk: continuous engine: decode steps per jitted chunk between returns to the host.
    refill_min: continuous engine: a chunk returns to refill once this many slots are free (queue non-empty).
    kv_pages: continuous engine: hold the slots' KV caches in page pools of this many pages per batch device
      (`sampling.paged`; each device's pool serves the slots on it) instead of a dense [max_rows, capacity]
      cache per slot: a slot holds the pages its row has reached, pages are taken as rows grow, and when a
      device's pool runs short its newest samples are preempted and restarted (same tokens). None or 0
      (default): dense slot caches (as `grpo.kv_pages = 0` and `--kv-pages 0` say it).
    page_size: entries per page (a power of two, at most `continuous.MIN_WINDOW`).
    unstack_layers: hold the layer weights as one array per layer and weight (`decode_weights.layers`, in the
      compute dtype) and decode with the layer loop unrolled over them, instead of scanning the stacked [L, ...] arrays
      (see `Qwen2._decode_layers`: XLA's CPU and GPU compilers copy every layer's weight slices out of the
      stack on each decode step; the TPU compiler reads them in place). Costs a copy of the layer weights
      beside the caller's (a GRPO trainer's base is then not shared) and a compile that grows with depth.
      Default (None): on unless the mesh is TPU.
    transpose_head: hold a [D, V] copy of the output projection (`decode_weights.head_t`, in the compute dtype)
      for the decode steps' logits (see `Qwen2.step_logits`: XLA's CPU dot streams that layout faster; at
      batch 1 the head is most of a small model's bytes per step). Costs a copy of the head (the embedding
      of a tied model) beside the caller's. Default (None): on when the mesh is CPU, where it was measured.
    """

    def __init__(self, model=None, *, graphdef=None, params=None, mesh=None, rules=None,
                 cache_dtype="bfloat16", max_rows: int = 256, min_prompt_bucket: int = 16, pad_id: int = 0,
                 engine: str = "continuous", decode_chunk: int = 32, refill_min: int = 1, weight_dtype=None,
                 unstack_layers: bool | None = None, kv_pages: int | None = None, page_size: int = 16,
                 transpose_head: bool | None = None):
        if model is not None:
            graphdef, params = nnx.split(model)
        if graphdef is None or params is None:
            raise ValueError("Sampler needs a model, or both graphdef= and params=")
        self.mesh = mesh if mesh is not None else shd.make_mesh((1, -1, 1))
        self.rules = rules or shd.sample_rules()
        self.graphdef = graphdef
        self.model_config = nnx.merge(graphdef, params).config
        self.weight_dtype = weight_dtype
        self._cast = None  # the jitted cast-and-place of update_params
        self.cache_dtype = dtype_of(cache_dtype)
        self.max_rows = int(max_rows)
        self.min_prompt_bucket = int(min_prompt_bucket)
        self.pad_id = int(pad_id)
        if engine not in ENGINES:
            raise ValueError(f"engine={engine!r}; expected one of {ENGINES}")
        if decode_chunk < 1 or refill_min < 1:
            raise ValueError(f"decode_chunk={decode_chunk} and refill_min={refill_min} must be >= 1")
        if kv_pages and (engine != "continuous" or kv_pages < 0):
            raise ValueError(f"kv_pages={kv_pages}: a positive page count, for the continuous engine only")
        if page_size < 1 or page_size & (page_size - 1) or page_size > MIN_WINDOW:
            raise ValueError(f"page_size={page_size}; expected a power of two <= {MIN_WINDOW}")
        self.kv_pages = int(kv_pages) if kv_pages else None
        self.page_size = int(page_size)
        self.engine = engine
        self.decode_chunk = int(decode_chunk)
        self.refill_min = int(refill_min)
        self.last_stats = None  # counters of the last continuous run (`continuous.ContinuousStats`)
        self.batch_devices = shd.mesh_axes_size(self.mesh, self.rules.lookup("act_batch"))
        self.row_sharding = shd.batch_sharding(self.mesh, self.rules, 1)
        self.mat_sharding = shd.batch_sharding(self.mesh, self.rules, 2)
        platform = self.mesh.devices.flat[0].platform
        self.unstack_layers = bool(platform != "tpu" if unstack_layers is None else unstack_layers)
        self.transpose_head = bool(platform == "cpu" if transpose_head is None else transpose_head)
        # the decode paths' own copies of weights (per-layer arrays, the transposed head); None fields when off
        self.decode_weights = qwen2.DecodeWeights()
        self.update_params(params)

    def update_params(self, params) -> None:
        """Replaces the parameters (e.g. after a training step): resharded to the sampling rules and cast to
        `weight_dtype` in one program (compiled once per sampler), so no intermediate copy is made on the source
        placement. Then the copies of `decode_weights` are made once: with `unstack_layers`, one array per layer
        and weight (and `params` keeps the rest, its stacked layer arrays replaced by empty ones); with
        `transpose_head`, the [D, V] head."""
        if self.weight_dtype is None or self.model_config.lora_spec is not None:
            params = jax.device_put(params, shd.state_shardings(params, self.mesh, self.rules))
        else:
            if self._cast is None:
                cast = functools.partial(cast_weights, dtype=self.weight_dtype)
                target = shd.state_shardings(jax.eval_shape(cast, params), self.mesh, self.rules)
                self._cast = jax.jit(cast, out_shardings=target)
            params = self._cast(params)
        if self.unstack_layers or self.transpose_head:
            self.decode_weights = qwen2.DecodeWeights()  # free the previous copies before the new ones are made
            self.decode_weights = _decode_copies(self.graphdef, params, layers=self.unstack_layers,
                                                 head=self.transpose_head)
        if self.unstack_layers:
            params = _hollow_layers(params)
        self.params = params

    def row_bucket(self, rows: int) -> int:
        """Rows of a compiled batch for `rows` real ones: a power of two that the batch devices divide."""
        d = self.batch_devices
        return max(d, -(-next_pow2(rows) // d) * d)

    def _batches(self, lengths: Sequence[int], n: int) -> list[list[int]]:
        """Prompt indices grouped by length (longest first), at most max_rows // n prompts per batch."""
        per = max(1, self.max_rows // n)
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        return [order[i:i + per] for i in range(0, len(order), per)]

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int], n: int = 1,
                 config: SamplingConfig = SamplingConfig(), stop_ids: Sequence[int] = (), key=0,
                 progress: Callable[[int], None] | None = None) -> SampleOutput:
        """Samples n continuations of each prompt.

        prompts: P lists of token ids (each non-empty). max_new_tokens: tokens per row at most; an int, or a
        sequence of P limits (one per prompt) or of P * n (one per row, prompt-major); the outputs are as wide
        as the largest. stop_ids: ids that end a row (kept as its last token). key: an int seed or a PRNG key.
        progress(k) is called as rows finish (static: after each batch) with the number of rows finished.
        Returns a SampleOutput with R = P * n rows, prompt-major.
        """
        prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
        limits = self._row_limits(max_new_tokens, len(prompts), n)
        for i, p in enumerate(prompts):
            if p.size == 0:
                raise ValueError(f"prompt {i} is empty")
        key = _as_key(key)
        stops = sorted({int(s) for s in stop_ids})
        stop_arr = np.full(max(4, -(-len(stops) // 4) * 4), -1, np.int32)  # fixed-size slots: fewer recompiles
        stop_arr[:len(stops)] = stops
        stop_arr = jax.device_put(stop_arr, shd.replicated(self.mesh))
        prompt_index = np.repeat(np.arange(len(prompts)), n).astype(np.int32)
        if self.engine == "continuous" and prompts:
            (out_tokens, out_lp, out_ent, out_len, out_stop), self.last_stats = run_continuous(
                self, prompts, limits, n, config, stop_arr, key, progress)
            reason = np.where(out_stop, FINISH_STOP, FINISH_LENGTH)
            return SampleOutput(tokens=out_tokens, logprobs=out_lp, entropy=out_ent, lengths=out_len,
                                finish_reason=reason, prompt_index=prompt_index)
        max_new_tokens = int(limits.max()) if limits.size else int(np.max(max_new_tokens, initial=1))
        per_row = bool(limits.size) and bool((limits != max_new_tokens).any())
        num = len(prompts) * n
        out_tokens = np.full((num, max_new_tokens), self.pad_id, np.int32)
        out_lp = np.zeros((num, max_new_tokens), np.float32)
        out_ent = np.zeros((num, max_new_tokens), np.float32)
        out_len = np.zeros(num, np.int32)
        out_stop = np.zeros(num, bool)
        lengths = [len(p) for p in prompts]
        for group in self._batches(lengths, n):
            lp = max(self.min_prompt_bucket, next_pow2(max(lengths[i] for i in group)))
            p_rows = self.row_bucket(len(group))
            toks = np.full((p_rows, lp), self.pad_id, np.int32)
            mask = np.zeros((p_rows, lp), bool)
            for r, i in enumerate(group):
                toks[r, lp - lengths[i]:] = prompts[i]
                mask[r, lp - lengths[i]:] = True
            real = len(group) * n
            b = self.row_bucket(real)
            row_src = np.zeros(b, np.int32)
            row_src[:real] = np.repeat(np.arange(len(group)), n)
            global_rows = (np.asarray(group, np.int64)[:, None] * n + np.arange(n)[None, :]).reshape(-1)
            row_ids = np.zeros(b, np.int32)
            row_ids[:real] = global_rows
            row_live = np.arange(b) < real
            row_limit = np.full(b, max_new_tokens, np.int32)
            row_limit[:real] = limits[global_rows]
            put_m = lambda a: jax.device_put(a, self.mat_sharding)  # noqa: E731
            put_r = lambda a: jax.device_put(a, self.row_sharding)  # noqa: E731
            with shd.use_rules(self.mesh, self.rules):
                st = prefill(self.graphdef, self.params, put_m(toks), put_m(mask), put_r(row_src),
                              put_r(row_live), put_r(row_ids), key, stop_arr, put_r(row_limit) if per_row else None,
                              cfg=config, max_new=max_new_tokens, cache_dtype=self.cache_dtype, pad_id=self.pad_id,
                              weights=self.decode_weights)
                st = decode(self.graphdef, self.params, st, stop_arr, cfg=config, pad_id=self.pad_id,
                            weights=self.decode_weights)
            tokens, lps, ents, lens, stopped = jax.device_get((st.tokens, st.logprobs, st.entropy, st.length,
                                                               st.stopped))
            out_tokens[global_rows] = tokens[:real]
            out_lp[global_rows] = lps[:real]
            out_ent[global_rows] = ents[:real]
            out_len[global_rows] = lens[:real]
            out_stop[global_rows] = stopped[:real]
            del st
            if progress is not None:
                progress(real)
        reason = np.where(out_stop, FINISH_STOP, FINISH_LENGTH)
        return SampleOutput(tokens=out_tokens, logprobs=out_lp, entropy=out_ent, lengths=out_len,
                            finish_reason=reason, prompt_index=prompt_index)

    @staticmethod
    def _row_limits(max_new_tokens, num_prompts: int, n: int) -> np.ndarray:
        """[P * n] int32 per-row token limits from an int, P per-prompt limits or P * n per-row limits."""
        if isinstance(max_new_tokens, (int, np.integer)):
            if n < 1 or max_new_tokens < 1:
                raise ValueError(f"n={n} and max_new_tokens={max_new_tokens} must be >= 1")
            return np.full(num_prompts * n, int(max_new_tokens), np.int32)
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        limits = np.asarray(max_new_tokens, np.int64).reshape(-1)
        if limits.size == num_prompts and n > 1:
            limits = np.repeat(limits, n)
        elif limits.size != num_prompts * n:
            raise ValueError(f"max_new_tokens has {limits.size} entries; expected an int, {num_prompts} (one per "
                             f"prompt) or {num_prompts * n} (one per row)")
        if limits.size and limits.min() < 1:
            raise ValueError(f"every max_new_tokens must be >= 1 (got {int(limits.min())})")
        return limits.astype(np.int32)
