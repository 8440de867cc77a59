#!/usr/bin/env python
"""Sample completions for every prompt of a JSONL file with the jitted KV-cache sampler.

    python scripts/generate.py --model DIR --input prompts.jsonl --output out.jsonl --n 8 --temperature 0.6
                               --top-p 0.95 --max-new-tokens 4096 [--no-chat-template] [--seed 0]

Each input record needs a "prompt" (a string, or a list of chat messages with the chat template). Each output
line is the input record plus "completions": [{"text", "num_tokens", "logprob", "finish_reason"}, ...] with
n entries; "logprob" is the summed log-probability (nats) of the generated tokens under the
temperature-scaled model distribution, "finish_reason" is "stop" or "length". Records keep input order.
Temperature 0 is greedy. Generation stops at <|im_end|> / <|endoftext|> (and the tokenizer's eos) and at any
--stop string (cut from the text).
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
    p.add_argument("--input", required=True, help="JSONL with one record per line, each with a prompt field")
    p.add_argument("--output", required=True, help="JSONL to write (input records plus completions)")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default 1)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0 = off)")
    p.add_argument("--min-p", type=float, default=0.0, help="min-p relative threshold (default 0 = off)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="generated tokens per sample at most")
    p.add_argument("--no-chat-template", action="store_true", help="use the prompt string as raw text")
    p.add_argument("--system", default=None,
                   help="system turn (chat template only): default (the template's own, also when omitted) | none "
                        "(no system turn, e.g. Qwen2.5-Math without its built-in instruction) | a message text")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); cut from the text")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same samples)")
    p.add_argument("--prompt-field", default="prompt", help="field holding the prompt (default: prompt)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="compute dtype (default: the checkpoint's own dtype)")
    p.add_argument("--cache-dtype", choices=["float32", "bfloat16"], default=None,
                   help="KV-cache dtype (default: the compute dtype)")
    p.add_argument("--max-rows", type=int, default=256, help="decode rows per batch (memory knob)")
    p.add_argument("--attention", choices=["auto", "splash", "cudnn", "blockwise", "dense"], default="auto",
                   help="attention backend (auto: splash on TPU, cuDNN on GPU, blockwise for long CPU inputs)")
    p.add_argument("--tensor-parallel", type=int, default=1, help="shard parameters over this many devices")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    args = p.parse_args(argv)
    if args.n < 1 or args.max_new_tokens < 1 or args.max_rows < 1:
        p.error("--n, --max-new-tokens and --max-rows must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from exploresft_jax.data.jsonl import iter_jsonl, require_field, write_jsonl
    from exploresft_jax.models import hf
    from exploresft_jax.models.tokenizer import load_tokenizer
    from exploresft_jax.sampling import Sampler, SamplingConfig, encode_prompts, generate_text

    config = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    prompt_types = str if args.no_chat_template else (str, list)
    records, prompts = [], []
    for line, rec in iter_jsonl(args.input):
        where = f"{args.input}:{line}"
        prompt = require_field(rec, args.prompt_field, prompt_types, where)
        try:  # encode now, so a bad prompt is reported with its line before the model loads
            encode_prompts(tokenizer, [prompt], chat_template=not args.no_chat_template, system=args.system)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        records.append(rec)
        prompts.append(prompt)
    if not records:
        raise ValueError(f"{args.input}: no records")

    model, mesh, rules = hf.load_for_inference(args.model, dtype=args.dtype, tensor_parallel=args.tensor_parallel,
                                              attention=args.attention)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sampler = Sampler(model, mesh=mesh, rules=rules, cache_dtype=args.cache_dtype or model.config.dtype,
                      max_rows=args.max_rows, pad_id=pad_id)

    start = time.perf_counter()
    with tqdm(total=len(prompts) * args.n, desc="generating", unit="sample", file=sys.stderr) as bar:
        results = generate_text(sampler, tokenizer, prompts, n=args.n, max_new_tokens=args.max_new_tokens,
                                config=config, chat_template=not args.no_chat_template, system=args.system,
                                stop_strings=args.stop, key=args.seed, progress=bar.update)
    elapsed = time.perf_counter() - start
    write_jsonl(args.output, ({**rec, "completions": [c.to_dict() for c in comps]}
                              for rec, comps in zip(records, results)))
    total = sum(c.num_tokens for comps in results for c in comps)
    print(f"generated {len(prompts) * args.n} samples ({total} tokens) for {len(prompts)} prompts in {elapsed:.1f}s"
          f" ({total / max(elapsed, 1e-9):.1f} tok/s, compilation included) -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
