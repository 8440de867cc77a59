#!/usr/bin/env python
"""Build an OXA training set from perplexity-scored teacher and self-generated responses.

    python scripts/select_oxa.py --teacher teacher.ppl.jsonl [--self self.ppl.jsonl] --output oxa_full.jsonl \
        --num-positives 50000 --mu 2.5 --sigma 0.25 [--num-negatives 50000 --neg-ppl-floor 1.2]

Inputs are score_ppl.py outputs (records with "prompt", "response", "ppl", "num_tokens"). Correctness comes from a
boolean field (--correct-field, default "correct") or, when a record has none, from verifying its "answer"
against its response. Positives are correct teacher responses; negatives are incorrect self-generated ones.
Writes the mixed set (loss_type "ce" / "ul"), a JSON report beside it and a PNG histogram of the selected PPLs.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from exploresft_jax import cli
from exploresft_jax.selection.oxa_select import select_files

DEFAULTS = {k: v.default for k, v in inspect.signature(select_files).parameters.items()}


def parse_args(argv=None):
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="scored teacher responses (JSONL)")
    p.add_argument("--self", dest="self_file", default=d["self_file"], help="scored self-generated responses (JSONL)")
    p.add_argument("--output", required=True, help="mixed training set to write (JSONL)")
    p.add_argument("--num-positives", type=int, default=d["num_positives"])
    p.add_argument("--num-negatives", type=int, default=d["num_negatives"])
    p.add_argument("--mu", type=float, default=d["mu"], help="Gaussian centre (release: 2.5 for 1.5B, 3.0 for 7B)")
    p.add_argument("--sigma", type=float, default=d["sigma"])
    p.add_argument("--ppl-min", type=float, default=d["ppl_min"])
    p.add_argument("--ppl-max", type=float, default=d["ppl_max"])
    p.add_argument("--bins", type=int, default=d["bins"])
    p.add_argument("--neg-ppl-floor", type=float, default=d["neg_ppl_floor"],
                   help="drop negatives below this PPL (degenerate text)")
    p.add_argument("--neg-max-tokens", type=int, default=d["neg_max_tokens"],
                   help="drop negatives longer than this many scored tokens (release: 25k; 0 keeps all)")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--correct-field", default=d["correct_field"])
    p.add_argument("--query-field", default=d["query_field"],
                   help="field identifying the query (one response per query)")
    p.add_argument("--no-prioritize-long", action="store_true", help="random order within a bin, not longest first")
    p.add_argument("--histogram", default=d["histogram"], help="PNG path (default: OUTPUT with .png)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    select_files(**vars(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
