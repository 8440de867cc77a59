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
import inspect
import sys

from exploresft_jax import cli
from exploresft_jax.models.attention import backend_choices
from exploresft_jax.sampling.files import generate_file

DEFAULTS = {k: v.default for k, v in inspect.signature(generate_file).parameters.items()}


def parse_args(argv=None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="HuggingFace-format model folder (config.json, *.safetensors, tokenizer)")
    p.add_argument("--input", required=True, help="JSONL with one record per line, each with a prompt field")
    p.add_argument("--output", required=True, help="JSONL to write (input records plus completions)")
    p.add_argument("--n", type=int, default=d["n"], help="samples per prompt (default %(default)s)")
    p.add_argument("--temperature", type=float, default=d["temperature"],
                   help="sampling temperature; 0 = greedy (default %(default)g)")
    p.add_argument("--top-p", type=float, default=d["top_p"], help="nucleus sampling mass (default %(default)g = off)")
    p.add_argument("--top-k", type=int, default=d["top_k"],
                   help="keep the k most likely tokens (default %(default)s = off)")
    p.add_argument("--min-p", type=float, default=d["min_p"],
                   help="min-p relative threshold (default %(default)g = off)")
    p.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"],
                   help="generated tokens per sample at most")
    p.add_argument("--no-chat-template", action="store_true", help="use the prompt string as raw text")
    p.add_argument("--system", default=d["system"],
                   help="system turn (chat template only): default (the template's own, also when omitted) | none "
                        "(no system turn, e.g. Qwen2.5-Math without its built-in instruction) | a message text")
    p.add_argument("--stop", action="append", default=d["stop"], help="stop string (repeatable); cut from the text")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed (same seed, same samples)")
    p.add_argument("--prompt-field", default=d["prompt_field"], help="field holding the prompt (default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=d["dtype"],
                   help="compute dtype (default: the checkpoint's own dtype)")
    p.add_argument("--cache-dtype", choices=["float32", "bfloat16"], default=d["cache_dtype"],
                   help="KV-cache dtype (default: the compute dtype)")
    p.add_argument("--max-rows", type=int, default=d["max_rows"], help="decode rows per batch (memory knob)")
    p.add_argument("--attention", choices=backend_choices(), default=d["attention"],
                   help="attention backend (auto: splash on TPU, cuDNN on GPU, blockwise for long CPU inputs)")
    p.add_argument("--tensor-parallel", type=int, default=d["tensor_parallel"],
                   help="shard parameters over this many devices")
    p.add_argument("--tokenizer", default=d["tokenizer"], help="tokenizer folder (default: --model)")
    p.add_argument("--kv-pages", type=int, default=d["kv_pages"],
                   help="> 0: a paged KV cache of this many pages per device (memory follows the tokens held; "
                        "scripts/fit.py --max-pages sizes it); 0 (default): a dense cache per decode row")
    p.add_argument("--page-size", type=int, default=d["page_size"],
                   help="--kv-pages: entries per page, a power of two <= 64 (default %(default)s)")
    args = p.parse_args(argv)
    if args.n < 1 or args.max_new_tokens < 1 or args.max_rows < 1 or args.kv_pages < 0:
        p.error("--n, --max-new-tokens and --max-rows must be >= 1, --kv-pages >= 0")
    return args


def main(argv=None) -> int:
    generate_file(**vars(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
