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
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exploresft_jax import cli  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="scored teacher responses (JSONL)")
    p.add_argument("--self", dest="self_file", default=None, help="scored self-generated responses (JSONL)")
    p.add_argument("--output", required=True, help="mixed training set to write (JSONL)")
    p.add_argument("--num-positives", type=int, default=50000)
    p.add_argument("--num-negatives", type=int, default=50000)
    p.add_argument("--mu", type=float, default=2.5, help="Gaussian centre (release: 2.5 for 1.5B, 3.0 for 7B)")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--ppl-min", type=float, default=1.0)
    p.add_argument("--ppl-max", type=float, default=5.0)
    p.add_argument("--bins", type=int, default=80)
    p.add_argument("--neg-ppl-floor", type=float, default=1.2, help="drop negatives below this PPL (degenerate text)")
    p.add_argument("--neg-max-tokens", type=int, default=25000,
                   help="drop negatives longer than this many scored tokens (release: 25k; 0 keeps all)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--correct-field", default="correct")
    p.add_argument("--query-field", default="prompt", help="field identifying the query (one response per query)")
    p.add_argument("--no-prioritize-long", action="store_true", help="random order within a bin, not longest first")
    p.add_argument("--histogram", default=None, help="PNG path (default: OUTPUT with .png)")
    return p.parse_args(argv)


def _load(path: str, correct_field: str) -> list[dict]:
    from exploresft_jax.data.jsonl import RecordError, iter_jsonl

    rows, to_verify = [], []
    for line, rec in iter_jsonl(path):
        where = f"{path}:{line}"
        for field in ("response", "ppl"):
            if field not in rec:
                raise RecordError(f"{where}: missing field {field!r} (score the file with score_ppl.py first)")
        if correct_field in rec:
            if not isinstance(rec[correct_field], bool):
                raise RecordError(f"{where}: field {correct_field!r} must be true or false")
        elif "answer" in rec:
            to_verify.append(len(rows))
        else:
            raise RecordError(f"{where}: needs {correct_field!r} (bool) or 'answer' to decide correctness")
        rows.append(rec)
    if to_verify:
        from exploresft_jax.rewards import check_batch

        verdicts = check_batch([str(rows[i]["answer"]) for i in to_verify], [rows[i]["response"] for i in to_verify])
        for i, v in zip(to_verify, verdicts):
            rows[i] = {**rows[i], correct_field: v.status == "correct"}
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from exploresft_jax.data.jsonl import write_jsonl
    from exploresft_jax.selection.oxa_select import plot_selection, select_negatives, select_positives

    teacher = [r for r in _load(args.teacher, args.correct_field) if r[args.correct_field]]
    positives, report = select_positives(
        teacher, args.num_positives, lo=args.ppl_min, hi=args.ppl_max, num_bins=args.bins, mu=args.mu,
        sigma=args.sigma, seed=args.seed, query_key=args.query_field, prioritize_long=not args.no_prioritize_long)
    negatives = []
    if args.self_file:
        wrong = [r for r in _load(args.self_file, args.correct_field) if not r[args.correct_field]]
        negatives = select_negatives(wrong, args.num_negatives, ppl_floor=args.neg_ppl_floor,
                                     query_key=args.query_field, max_tokens=args.neg_max_tokens)
    out = write_jsonl(args.output, [{**r, "loss_type": "ce"} for r in positives] +
                      [{**r, "loss_type": "ul"} for r in negatives])
    summary = {"positives": len(positives), "negatives": len(negatives), "correct_teacher": len(teacher),
               "in_ppl_range": report.candidates_in_range, "target": args.num_positives,
               "shortfall": report.shortfall, "bins": {"edges": report.edges, "target": report.targets,
                                                       "selected": report.selected}}
    Path(out).with_suffix(".report.json").write_text(json.dumps(summary, indent=1) + "\n")
    png = args.histogram or str(Path(out).with_suffix(".png"))
    plot_selection(report, positives, negatives, png)
    print(f"selected {len(positives)} positives (target {args.num_positives}, shortfall {report.shortfall}) and "
          f"{len(negatives)} negatives -> {out}; histogram {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
