#!/usr/bin/env python
"""Verifier accuracy against math-verify, and throughput.

    python scripts/bench/verifier.py --data-dir ../shared/data/benchmarks [--workers 2] [--limit N] [--runs 3]
    python scripts/bench/verifier.py --accuracy-only          # side-by-side table only
    python scripts/bench/verifier.py --throughput-only

Accuracy: every (gold, prediction, equal) case of ``tests/data/verifier_cases.jsonl`` (the project's own cases,
with category labels) is judged by our verifier (default configuration, through the process pool) and by
math-verify's default call ``math_verify.verify(math_verify.parse(gold), math_verify.parse(prediction))``. The
table gives per-category accuracy of each and their false positives (True on a pair that is not equal).

Throughput: every benchmark gold against itself in ``The answer is $\\boxed{gold}$.``, in one process (the
verifier called in-process, soft timer only) and over the process pool (hard timeouts), for the default
configuration (identical normalised strings short-cut the parse) and for the full path (``string_match=False``:
no string short-cut; every item goes through the numeric or sympy comparison). Pool rates are measured after
the workers have started (start-up is reported separately). ``--runs`` repeats each measurement and reports the
median and the spread (min-max).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

from exploresft_jax.rewards import VerifierConfig, VerifierPool, check_inline

CASES = Path(__file__).resolve().parents[2] / "tests" / "data" / "verifier_cases.jsonl"


def load_cases(path=CASES) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _mv_verdict(gold, pred) -> bool:
    import math_verify

    gold = gold if isinstance(gold, str) else ", ".join(str(g) for g in gold)
    try:
        return bool(math_verify.verify(math_verify.parse(gold), math_verify.parse(pred)))
    except Exception:  # noqa: BLE001 - an error is a False verdict, as in math-verify's own default
        return False


def accuracy(cases, workers: int, timeout: float) -> list[tuple]:
    """Rows ``(category, n, ours_ok, mv_ok, ours_fp, mv_fp, negatives)``, the total last."""
    logging.disable(logging.WARNING)  # math-verify warns on every call about its own timeout settings
    with VerifierPool(workers, VerifierConfig(timeout=timeout)) as pool:
        ours = [v.correct for v in pool.check_batch([c["gold"] for c in cases], [c["prediction"] for c in cases])]
    mv = [_mv_verdict(c["gold"], c["prediction"]) for c in cases]
    stats = collections.defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for c, o, m in zip(cases, ours, mv):
        for key in (c["category"], "all"):
            st = stats[key]
            st[0] += 1
            st[1] += o == c["equal"]
            st[2] += m == c["equal"]
            st[3] += o and not c["equal"]
            st[4] += m and not c["equal"]
            st[5] += not c["equal"]
    order = list(dict.fromkeys(c["category"] for c in cases)) + ["all"]
    return [(k, *stats[k]) for k in order]


def print_accuracy(rows) -> None:
    print("| category | cases (not equal) | ours | math-verify | false positives ours | false positives math-verify |")
    print("|---|---|---|---|---|---|")
    for cat, n, o, m, ofp, mfp, neg in rows:
        name = f"**{cat}**" if cat == "all" else cat
        print(f"| {name} | {n} ({neg}) | {o / n:.1%} ({o}) | {m / n:.1%} ({m}) | {ofp} | {mfp} |")


def throughput(golds, workers: int, timeout: float, runs: int) -> list[tuple]:
    preds = [f"The answer is $\\boxed{{{g}}}$." for g in golds]
    rows = []
    for label, cfg in (("default (string fast path)", VerifierConfig(timeout=timeout)),
                       ("full path (`string_match=False`)", VerifierConfig(timeout=timeout, string_match=False))):
        singles, pools, starts = [], [], []
        for _ in range(runs):
            # A fresh pool per run: every run starts with cold parse caches.
            t0 = time.perf_counter()
            single = [check_inline(g, q, cfg) for g, q in zip(golds, preds)]
            singles.append(len(golds) / (time.perf_counter() - t0))
            pool = VerifierPool(workers, cfg)
            t0 = time.perf_counter()
            pool.start()
            starts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pooled = pool.check_batch(golds, preds)
            pools.append(len(golds) / (time.perf_counter() - t0))
            pool.close()
            print(f"{label}: single {singles[-1]:.0f}/s, pool {pools[-1]:.0f}/s", file=sys.stderr)
            # Single-process caches persist between runs; clear them so every run is cold.
            from exploresft_jax.rewards import equivalence, fastparse

            equivalence._parse.cache_clear()
            fastparse.fast_parse.cache_clear()
        rows.append((label, len(golds), singles, pools, statistics.median(starts),
                     sum(v.correct for v in single), sum(v.correct for v in pooled)))
    return rows


def _med(xs) -> str:
    return f"{statistics.median(xs):.0f} ({min(xs):.0f}-{max(xs):.0f})" if len(xs) > 1 else f"{xs[0]:.0f}"


def print_throughput(rows, workers: int, runs: int) -> None:
    print(f"| configuration | items | single process (items/s), median (min-max) of {runs} "
          f"| pool x{workers} (items/s), median (min-max) | pool start (s) | correct single / pool |")
    print("|---|---|---|---|---|---|")
    for label, n, r1, rp, ts, c1, cp in rows:
        print(f"| {label} | {n} | {_med(r1)} | {_med(rp)} | {ts:.1f} | {c1} / {cp} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_dir = Path(__file__).resolve().parents[3] / "shared" / "data" / "benchmarks"
    p.add_argument("--data-dir", default=os.environ.get("EXPLORESFT_BENCHMARKS", str(default_dir)))
    p.add_argument("--cases", default=str(CASES), help="JSONL of {category, gold, prediction, equal}")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N golds (all by default)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=3, help="repeats of each throughput measurement")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--accuracy-only", action="store_true")
    which.add_argument("--throughput-only", action="store_true")
    args = p.parse_args(argv)

    if not args.throughput_only:
        cases = load_cases(args.cases)
        print(f"{len(cases)} cases from {args.cases}", file=sys.stderr)
        print_accuracy(accuracy(cases, args.workers, args.timeout))
        print()
    if not args.accuracy_only:
        from exploresft_jax.eval import BENCHMARKS, load_benchmark

        golds = [pr.answer for name in BENCHMARKS for pr in load_benchmark(name, args.data_dir)]
        if args.limit:
            golds = golds[:args.limit]
        print(f"{len(golds)} golds from {len(BENCHMARKS)} benchmarks; {os.cpu_count()} CPUs; "
              f"workers={args.workers}; runs={args.runs}", file=sys.stderr)
        print_throughput(throughput(golds, args.workers, args.timeout, args.runs), args.workers, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
