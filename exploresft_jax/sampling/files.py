"""Sampling over files: completions for every prompt of a JSONL file (what scripts/generate.py runs).

The model, tokenizer and sampler are imported when `generate_file` runs, not when this module is imported.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence


def generate_file(model, input, output, *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0, max_new_tokens: int = 1024, no_chat_template: bool = False,
                  system: str | None = None, stop: Sequence[str] | None = None, seed: int = 0,
                  prompt_field: str = "prompt", dtype: str | None = None, cache_dtype: str | None = None,
                  max_rows: int = 256, attention: str = "auto", tensor_parallel: int = 1, tokenizer=None,
                  kv_pages: int = 0, page_size: int = 16) -> dict:
    """Samples `n` completions for every prompt of a JSONL file with the jitted KV-cache sampler (its flags are
    these keyword arguments).

    model: HuggingFace-format model folder (config.json, *.safetensors, tokenizer); tokenizer: tokenizer folder
    (default: `model`). input: JSONL whose records hold `prompt_field` (a string, or a list of chat messages
    unless `no_chat_template`); output: JSONL written in input order, each line the input record plus
    "completions": [{"text", "num_tokens", "logprob", "finish_reason"}, ...] with n entries, where "logprob" is
    the summed log-probability (nats) of the generated tokens under the temperature-scaled distribution and
    "finish_reason" is "stop" or "length".
    Sampling: temperature (0 = greedy), top_p / top_k / min_p (1.0 / 0 / 0.0 = off), at most max_new_tokens
    tokens per sample; generation stops at the tokenizer's stop tokens and at any `stop` string (cut from the
    text); the same `seed` gives the same samples. system: the chat template's system turn (None or "default":
    the template's own, "none": no system turn, else the message text). no_chat_template: the prompt string is
    the raw text. dtype / cache_dtype: "float32" / "bfloat16" compute and KV-cache dtypes (default: the
    checkpoint's own / the compute dtype); max_rows: decode rows per batch; attention: backend (see
    models/attention.py); tensor_parallel: devices the parameters are sharded over; kv_pages > 0: the KV cache
    in page pools of that many pages of `page_size` entries per device (`Sampler(kv_pages=...)`; 0: dense).
    Returns {"prompts", "samples", "tokens" (generated), "seconds" (generation, compilation included), "output"}.
    Raises ValueError (naming file and line for a bad record, before the model loads; `output` is then untouched).
    """
    from exploresft_jax.data.jsonl import iter_jsonl, write_jsonl

    numbered = [(f"{input}:{line}", rec) for line, rec in iter_jsonl(input)]
    if not numbered:
        raise ValueError(f"{input}: no records")
    kw = dict(n=n, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, max_new_tokens=max_new_tokens,
              no_chat_template=no_chat_template, system=system, stop=stop, seed=seed, prompt_field=prompt_field,
              dtype=dtype, cache_dtype=cache_dtype, max_rows=max_rows, attention=attention,
              tensor_parallel=tensor_parallel, tokenizer=tokenizer, kv_pages=kv_pages, page_size=page_size)
    out, stats = generate_records(model, numbered, **kw)
    write_jsonl(output, out)
    print(f"generated {stats['samples']} samples ({stats['tokens']} tokens) for {stats['prompts']} prompts in "
          f"{stats['seconds']:.1f}s ({stats['tokens'] / max(stats['seconds'], 1e-9):.1f} tok/s, compilation "
          f"included) -> {output}", file=sys.stderr)
    return {**stats, "output": output}


def generate_records(model, records: Sequence[tuple[str, dict]], *, n: int = 1, temperature: float = 1.0,
                     top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, max_new_tokens: int = 1024,
                     no_chat_template: bool = False, system: str | None = None, stop: Sequence[str] | None = None,
                     seed: int = 0, prompt_field: str = "prompt", dtype: str | None = None,
                     cache_dtype: str | None = None, max_rows: int = 256, attention: str = "auto",
                     tensor_parallel: int = 1, tokenizer=None, kv_pages: int = 0,
                     page_size: int = 16) -> tuple[list[dict], dict]:
    """`generate_file` over records in memory: `records` are (where, record) pairs (`where` names the record in
    errors, e.g. "file:line"); returns (each record plus its "completions", {"prompts", "samples", "tokens",
    "seconds"}). The settings are `generate_file`'s."""
    if n < 1 or max_new_tokens < 1 or max_rows < 1 or kv_pages < 0:
        raise ValueError("n, max_new_tokens and max_rows must be >= 1, kv_pages >= 0")
    from tqdm import tqdm

    from exploresft_jax.data.jsonl import require_field
    from exploresft_jax.models import hf
    from exploresft_jax.models.tokenizer import load_tokenizer
    from exploresft_jax.sampling import Sampler, SamplingConfig, encode_prompts, generate_text

    config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    tok = load_tokenizer(tokenizer or model)
    prompt_types = str if no_chat_template else (str, list)
    prompts = []
    for where, rec in records:
        prompt = require_field(rec, prompt_field, prompt_types, where)
        try:  # encode now, so a bad prompt is reported with its line before the model loads
            encode_prompts(tok, [prompt], chat_template=not no_chat_template, system=system)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        prompts.append(prompt)

    net, mesh, rules = hf.load_for_inference(model, dtype=dtype, tensor_parallel=tensor_parallel, attention=attention)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    sampler = Sampler(net, mesh=mesh, rules=rules, cache_dtype=cache_dtype or net.config.dtype, max_rows=max_rows,
                      pad_id=pad_id, kv_pages=kv_pages, page_size=page_size)

    start = time.perf_counter()
    with tqdm(total=len(prompts) * n, desc="generating", unit="sample", file=sys.stderr) as bar:
        results = generate_text(sampler, tok, prompts, n=n, max_new_tokens=max_new_tokens, config=config,
                                chat_template=not no_chat_template, system=system, stop_strings=list(stop or ()),
                                key=seed, progress=bar.update)
    elapsed = time.perf_counter() - start
    out = [{**rec, "completions": [c.to_dict() for c in comps]} for (_, rec), comps in zip(records, results)]
    total = sum(c.num_tokens for comps in results for c in comps)
    return out, {"prompts": len(prompts), "samples": len(prompts) * n, "tokens": total, "seconds": elapsed}
