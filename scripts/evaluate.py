#!/usr/bin/env python
"""Score math generations: Pass@1, Pass@k, any-correct@n, lengths, entropy, no-answer rate per benchmark.

Score an existing JSONL of generations (the generate.py output contract):

    python scripts/evaluate.py --generations gens.jsonl --benchmark aime24 --output-dir out/

Generate with a model, then score (needs the sampler; OXA protocol defaults: T = 0.6, top-p = 0.95):

    python scripts/evaluate.py --model DIR --benchmarks aime24,aime25,amc23,math500,minerva_math,olympiadbench \\
        --data-dir ../shared/data/benchmarks --n 16 --max-new-tokens 4096 --output-dir out/

Each generations record holds the benchmark's own fields (or just "answer") plus
"completions": [{"text", "num_tokens", "logprob", "finish_reason"}, ...] ("entropy", the mean per-token entropy
of a completion, is optional; without it the table shows "-", and results.json also gives mean_token_nll,
-logprob/num_tokens, a sampled estimate of the same quantity). The benchmark of a record is its "benchmark" field,
else --benchmark, else the file name. Writes to --output-dir: results.json, results.md (per-benchmark table and the
unweighted average over benchmarks, as papers report it), pass_at_k.png, samples.jsonl (one line per completion with
its verdict).
"""

from __future__ import annotations

import argparse
import inspect
import sys

from exploresft_jax.eval.runner import InputError, evaluate
from exploresft_jax.models.attention import backend_choices
from exploresft_jax.rewards import EXTRACTION_MODES

DEFAULTS = {k: v.default for k, v in inspect.signature(evaluate).parameters.items()}


def parse_args(argv=None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--generations", nargs="+", metavar="FILE", help="JSONL file(s) of generations to score")
    src.add_argument("--model", help="model folder: generate with the sampler, then score")
    p.add_argument("--benchmark", default=d["benchmark"], help="benchmark of records without a 'benchmark' field")
    p.add_argument("--benchmarks", default=d["benchmarks"],
                   help="comma-separated benchmarks to generate for (with --model)")
    p.add_argument("--data-dir", default=d["data_dir"],
                   help="folder with <benchmark>/test.jsonl (default: $EXPLORESFT_BENCHMARKS)")
    p.add_argument("--limit", type=int, default=d["limit"], help="first N problems per benchmark (with --model)")
    p.add_argument("--n", type=int, default=d["n"], help="samples per problem (with --model; default %(default)s)")
    p.add_argument("--temperature", type=float, default=d["temperature"],
                   help="sampling temperature (default %(default)s, OXA)")
    p.add_argument("--top-p", type=float, default=d["top_p"], help="nucleus mass (default %(default)s, OXA)")
    p.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"],
                   help="tokens per sample at most (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=d["dtype"])
    p.add_argument("--attention", choices=backend_choices(), default=d["attention"],
                   help="attention backend for --model generation (see generate.py)")
    p.add_argument("--system", default=d["system"],
                   help="system turn for --model generation: default (the template's own) | none | a text")
    p.add_argument("--output-dir", required=True, help="folder for results.json/.md, pass_at_k.png, samples.jsonl")
    p.add_argument("--workers", type=int, default=d["workers"], help="verifier processes")
    p.add_argument("--timeout", type=float, default=d["timeout"],
                   help="seconds per verification (default %(default)g)")
    p.add_argument("--require-think-close", action="store_true", help="the answer must come after </think>")
    p.add_argument("--extraction", choices=EXTRACTION_MODES, default=d["extraction"],
                   help="how the verifier finds the answer: permissive (default: box, answer phrases, last math, "
                        "closing number), standard (box, bare expression, 'the answer is'), boxed_only")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.n < 1 or args.workers < 1 or args.timeout <= 0:
        p.error("--n and --workers must be >= 1 and --timeout > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        evaluate(**vars(args))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
