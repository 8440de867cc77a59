#!/usr/bin/env python
"""Perplexity of each record's response under a model (the confidence signal of OXA data selection).

    python scripts/score_ppl.py --model DIR --input in.jsonl --output out.jsonl [--field response]

By default, as the OXA release does, only the response text is tokenised (no prompt, no chat template) and
its first token is not scored. `--condition-on-prompt` scores the response after the chat-templated prompt.
Each output line is the input record plus "ppl", "mean_logprob" (nats per token) and "num_tokens" (scored
tokens); records are written in input order.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exploresft_jax import cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HuggingFace-format model folder (config.json, *.safetensors, tokenizer)")
    p.add_argument("--input", required=True, help="JSONL with one record per line")
    p.add_argument("--output", required=True, help="JSONL to write (input records plus ppl fields)")
    p.add_argument("--field", default="response", help="field holding the text to score (default: response)")
    p.add_argument("--prompt-field", default="prompt", help="prompt field for --condition-on-prompt")
    p.add_argument("--condition-on-prompt", action="store_true",
                   help="score the response after the chat-templated prompt instead of the response alone")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="compute dtype (default: the checkpoint's own dtype)")
    p.add_argument("--max-length", type=int, default=32768, help="truncate sequences to this many tokens")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per batch (memory knob)")
    p.add_argument("--chunk-size", type=int, default=1024, help="sequence chunk of the memory-light head")
    p.add_argument("--attention", choices=["auto", "splash", "cudnn", "blockwise", "dense"], default="auto",
                   help="attention backend (auto: splash on TPU, cuDNN on GPU, blockwise for long CPU inputs)")
    p.add_argument("--tensor-parallel", type=int, default=1, help="shard parameters over this many devices")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    from tqdm import tqdm

    from exploresft_jax.data.jsonl import iter_jsonl, require_field, write_jsonl
    from exploresft_jax.models import hf
    from exploresft_jax.models.tokenizer import load_tokenizer
    from exploresft_jax.selection.perplexity import encode_for_scoring, score_token_lists

    records, token_lists, scored_lists = [], [], []
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    for line, rec in iter_jsonl(args.input):
        where = f"{args.input}:{line}"
        response = require_field(rec, args.field, str, where)
        prompt = None
        if args.condition_on_prompt:
            prompt = require_field(rec, args.prompt_field, (str, list), where)
        try:
            ids, scored = encode_for_scoring(tokenizer, response, prompt, condition_on_prompt=args.condition_on_prompt,
                                             max_length=args.max_length)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        records.append(rec)
        token_lists.append(ids)
        scored_lists.append(scored)
    if not records:
        raise ValueError(f"{args.input}: no records")

    model, mesh, rules = hf.load_for_inference(args.model, dtype=args.dtype, tensor_parallel=args.tensor_parallel,
                                              attention=args.attention)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    start = time.perf_counter()
    with tqdm(total=len(records), desc="scoring", unit="seq", file=sys.stderr) as bar:
        result = score_token_lists(model, token_lists, scored_lists, mesh=mesh, rules=rules,
                                   max_batch_tokens=args.max_batch_tokens, chunk_size=args.chunk_size,
                                   pad_id=pad_id, progress=bar.update)
    elapsed = time.perf_counter() - start

    def out():
        for i, rec in enumerate(records):
            n = int(result.num_tokens[i])
            mlp = float(result.mean_logprob[i]) if n else None
            yield {**rec, "ppl": float(np.exp(-mlp)) if n else None, "mean_logprob": mlp, "num_tokens": n}

    write_jsonl(args.output, out())
    total = int(sum(len(t) for t in token_lists))
    print(f"scored {len(records)} records ({total} tokens) in {elapsed:.1f}s ({total / max(elapsed, 1e-9):.0f} tok/s)"
          f" -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
