"""Sequence perplexity under a model: the confidence signal OXA selects data by.

`encode_for_scoring` turns a record into (token ids, which tokens are scored); `score_token_lists` runs the
model over length-sorted, bucketed, device-sharded batches and returns the summed label log-probability and
the number of scored tokens per sequence. Logits are never materialised: the head runs through
`losses.chunked_token_stats`. `score_file` does it all for a JSONL file (what scripts/score_ppl.py runs).

Two conditioning modes:
* response only (the OXA release): the response text alone is tokenised (no prompt, no chat template); the
  first token has no context and is not scored, so PPL = exp(-mean_{t>=2} log p(y_t | y_<t)).
* conditioned on the prompt: chat-template(prompt) + the assistant turn; every response token is scored
  (including the template's end-of-turn tokens, which SFT also trains on).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exploresft_jax import losses
from exploresft_jax import sharding as shd
from exploresft_jax.models.tokenizer import encode_prompt_response


def encode_for_scoring(tokenizer, response: str, prompt=None, *, condition_on_prompt: bool = False,
                       max_length: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """(ids [T] int32, scored [T] int32) for one record, truncated to `max_length` tokens."""
    if condition_on_prompt:
        ids, scored = encode_prompt_response(tokenizer, prompt, response, chat_template=True)
    else:
        ids = np.asarray(tokenizer(response, add_special_tokens=True)["input_ids"], np.int32)
        scored = np.ones(len(ids), np.int32)
        scored[:1] = 0  # the first token has no context
    return ids[:max_length], scored[:max_length]


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Per sequence ([N], or [N, groups] for grouped scoring): summed log-prob of scored tokens (nats), their count,
    and their mean entropy (nats)."""

    sum_logprob: np.ndarray
    num_tokens: np.ndarray
    mean_entropy: np.ndarray

    @property
    def mean_logprob(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.num_tokens > 0, self.sum_logprob / np.maximum(self.num_tokens, 1), np.nan)

    @property
    def ppl(self) -> np.ndarray:
        return np.exp(-self.mean_logprob)


def _bucket_length(n: int, min_len: int) -> int:
    """Smallest power of two >= n (and >= min_len): few distinct shapes, so few compiles."""
    return max(min_len, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def make_batches(lengths: Sequence[int], *, max_batch_tokens: int, batch_multiple: int, min_len: int = 16,
                 max_batch_size: int = 256) -> list[tuple[int, list[int]]]:
    """Length-sorted batches: list of (padded_length, [record indices]).

    Each batch pads to a power-of-two length L and holds at most max(batch_multiple, max_batch_tokens // L)
    rows (rounded down to a multiple of `batch_multiple`, the number of devices the batch is split over).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, i = [], 0
    while i < len(order):
        length = _bucket_length(lengths[order[i]], min_len)
        rows = min(max_batch_size, max(1, max_batch_tokens // length))
        rows = max(batch_multiple, rows // batch_multiple * batch_multiple)
        batches.append((length, order[i:i + rows]))
        i += rows
    return batches


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_size", "num_groups"))
def score_batch(graphdef, state, ids, valid, scored, *, chunk_size: int, num_groups: int = 1):
    """One scoring batch (jitted): ids / valid / scored [B, L] (int32 / bool / int32). scored: 0 = not scored,
    g in 1..num_groups = scored and counted in group g (1 when there are no groups). Returns per row float32
    (sum log p of scored tokens, their count, sum entropy), each [B] when num_groups == 1, else [B, num_groups]."""
    model = nnx.merge(graphdef, state)
    b, length = ids.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    hidden = model(ids, positions, attn_mask=valid)
    # logits at t score token t+1: shift labels and the scored mask left by one.
    labels = jnp.concatenate([ids[:, 1:], jnp.zeros((b, 1), ids.dtype)], axis=1)
    group = jnp.concatenate([scored[:, 1:], jnp.zeros((b, 1), scored.dtype)], axis=1)
    target = jax.nn.one_hot(group - 1, num_groups, dtype=jnp.float32)  # [B, L, G]; group 0 is all zeros
    stats = losses.chunked_token_stats(hidden, model.head_weight(), labels, chunk_size=chunk_size)
    sums = lambda x: jnp.einsum("BL,BLG->BG", x, target)  # noqa: E731
    out = (sums(stats["logprob"]), jnp.sum(target, 1), sums(stats["entropy"]))
    return tuple(x[:, 0] for x in out) if num_groups == 1 else out


def score_token_lists(model, token_lists: Sequence[np.ndarray], scored_lists: Sequence[np.ndarray], *,
                      mesh=None, rules=None, max_batch_tokens: int = 16384, chunk_size: int = 1024,
                      pad_id: int = 0, progress: Callable[[int], None] | None = None,
                      num_groups: int = 1) -> ScoreResult:
    """Scores every sequence; see the module docstring for what is scored.

    token_lists[i]: [T_i] int ids; scored_lists[i]: [T_i] 0/1, 1 on tokens whose log-prob counts; with
    num_groups > 1, 0..num_groups: the group a scored token counts in (0: not scored), and every field of the
    result is [N, num_groups] (one pass gives every group's sums).
    mesh/rules: where the batch is split (default: all devices, `sharding.sample_rules()`); the model's
    parameters are used where they already live. progress(n) is called after each batch with its size.
    """
    if mesh is None:
        mesh = shd.make_mesh((1, -1, 1))
    rules = rules or shd.sample_rules()
    data_sharding = shd.batch_sharding(mesh, rules, 2)
    batch_multiple = shd.mesh_axes_size(mesh, rules.lookup("act_batch"))
    graphdef, state = nnx.split(model)
    n = len(token_lists)
    shape = (n,) if num_groups == 1 else (n, num_groups)
    sum_lp, count, sum_ent = np.zeros(shape), np.zeros(shape, np.int64), np.zeros(shape)
    lengths = [len(t) for t in token_lists]
    for length, idx in make_batches(lengths, max_batch_tokens=max_batch_tokens, batch_multiple=batch_multiple):
        rows = max(batch_multiple, -(-len(idx) // batch_multiple) * batch_multiple)
        ids = np.full((rows, length), pad_id, np.int32)
        valid = np.zeros((rows, length), bool)
        scored = np.zeros((rows, length), np.int32)
        for r, i in enumerate(idx):
            t = lengths[i]
            ids[r, :t], valid[r, :t], scored[r, :t] = token_lists[i], True, scored_lists[i]
        put = lambda a: jax.device_put(a, data_sharding)  # noqa: E731
        with shd.use_rules(mesh, rules):
            lp, c, ent = score_batch(graphdef, state, put(ids), put(valid), put(scored),
                                      chunk_size=min(chunk_size, length), num_groups=num_groups)
        lp, c, ent = (np.asarray(x, np.float64) for x in jax.device_get((lp, c, ent)))
        sum_lp[idx], count[idx], sum_ent[idx] = lp[:len(idx)], c[:len(idx)].astype(np.int64), ent[:len(idx)]
        if progress is not None:
            progress(len(idx))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_ent = np.where(count > 0, sum_ent / np.maximum(count, 1), np.nan)
    return ScoreResult(sum_lp, count, mean_ent)


def score_file(model, input, output, *, field: str = "response", prompt_field: str = "prompt",
               condition_on_prompt: bool = False, dtype: str | None = None, max_length: int = 32768,
               max_batch_tokens: int = 16384, chunk_size: int = 1024, attention: str = "auto",
               tensor_parallel: int = 1, tokenizer=None) -> dict:
    """Perplexity of every record's `field` under a model, written beside the record (what scripts/score_ppl.py
    runs; its flags are these keyword arguments).

    model: HuggingFace-format model folder (config.json, *.safetensors, tokenizer); tokenizer: tokenizer folder
    (default: `model`). input: JSONL, one record per line; output: JSONL written in input order, each line the
    input record plus "ppl", "mean_logprob" (nats per scored token) and "num_tokens" (scored tokens); a record
    with no scored token gets ppl = mean_logprob = None. Conditioning: see the module docstring (response only by
    default; `condition_on_prompt` scores the response after the chat-templated `prompt_field`).
    dtype: "float32" / "bfloat16" (default: the checkpoint's own); max_length: tokens kept per sequence;
    max_batch_tokens: padded tokens per batch; chunk_size: sequence chunk of the loss head; attention: backend
    (see models/attention.py); tensor_parallel: devices the parameters are sharded over.
    Returns {"records", "tokens" (all tokens, scored or not), "seconds" (model run, compilation included),
    "output"}. Raises ValueError (naming file and line) on a bad record, before the model loads; `output` is then
    left untouched.
    """
    from tqdm import tqdm

    from exploresft_jax.data.jsonl import iter_jsonl, require_field, write_jsonl
    from exploresft_jax.models import hf
    from exploresft_jax.models.tokenizer import load_tokenizer

    records, token_lists, scored_lists = [], [], []
    tok = load_tokenizer(tokenizer or model)
    for line, rec in iter_jsonl(input):
        where = f"{input}:{line}"
        response = require_field(rec, field, str, where)
        prompt = None
        if condition_on_prompt:
            prompt = require_field(rec, prompt_field, (str, list), where)
        try:
            ids, scored = encode_for_scoring(tok, response, prompt, condition_on_prompt=condition_on_prompt,
                                             max_length=max_length)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        records.append(rec)
        token_lists.append(ids)
        scored_lists.append(scored)
    if not records:
        raise ValueError(f"{input}: no records")

    net, mesh, rules = hf.load_for_inference(model, dtype=dtype, tensor_parallel=tensor_parallel, attention=attention)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    start = time.perf_counter()
    with tqdm(total=len(records), desc="scoring", unit="seq", file=sys.stderr) as bar:
        result = score_token_lists(net, token_lists, scored_lists, mesh=mesh, rules=rules,
                                   max_batch_tokens=max_batch_tokens, chunk_size=chunk_size, pad_id=pad_id,
                                   progress=bar.update)
    elapsed = time.perf_counter() - start

    def out():
        for i, rec in enumerate(records):
            n = int(result.num_tokens[i])
            mlp = float(result.mean_logprob[i]) if n else None
            yield {**rec, "ppl": float(np.exp(-mlp)) if n else None, "mean_logprob": mlp, "num_tokens": n}

    write_jsonl(output, out())
    total = int(sum(len(t) for t in token_lists))
    print(f"scored {len(records)} records ({total} tokens) in {elapsed:.1f}s ({total / max(elapsed, 1e-9):.0f} tok/s)"
          f" -> {output}", file=sys.stderr)
    return {"records": len(records), "tokens": total, "seconds": elapsed, "output": output}
