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
import inspect
import sys

from exploresft_jax import cli
from exploresft_jax.models.attention import backend_choices
from exploresft_jax.selection.perplexity import score_file

DEFAULTS = {k: v.default for k, v in inspect.signature(score_file).parameters.items()}


def parse_args(argv=None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="HuggingFace-format model folder (config.json, *.safetensors, tokenizer)")
    p.add_argument("--input", required=True, help="JSONL with one record per line")
    p.add_argument("--output", required=True, help="JSONL to write (input records plus ppl fields)")
    p.add_argument("--field", default=d["field"], help="field holding the text to score (default: %(default)s)")
    p.add_argument("--prompt-field", default=d["prompt_field"], help="prompt field for --condition-on-prompt")
    p.add_argument("--condition-on-prompt", action="store_true",
                   help="score the response after the chat-templated prompt instead of the response alone")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=d["dtype"],
                   help="compute dtype (default: the checkpoint's own dtype)")
    p.add_argument("--max-length", type=int, default=d["max_length"], help="truncate sequences to this many tokens")
    p.add_argument("--max-batch-tokens", type=int, default=d["max_batch_tokens"],
                   help="padded tokens per batch (memory knob)")
    p.add_argument("--chunk-size", type=int, default=d["chunk_size"], help="sequence chunk of the memory-light head")
    p.add_argument("--attention", choices=backend_choices(), default=d["attention"],
                   help="attention backend (auto: splash on TPU, cuDNN on GPU, blockwise for long CPU inputs)")
    p.add_argument("--tensor-parallel", type=int, default=d["tensor_parallel"],
                   help="shard parameters over this many devices")
    p.add_argument("--tokenizer", default=d["tokenizer"], help="tokenizer folder (default: --model)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    score_file(**vars(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
