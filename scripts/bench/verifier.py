#!/usr/bin/env python
"""Verifier throughput: verifications per second over every benchmark gold against itself in \\boxed{}.

    python scripts/bench/verifier.py --data-dir ../shared/data/benchmarks [--workers 2] [--limit N]

Compares one process (the verifier called in-process, soft timer only) with the process pool (hard timeouts),
for the default configuration (identical normalised strings short-cut the parse) and for the full sympy path
(``string_match=False``: every item is parsed and compared). Prints a Markdown table; pool rates are measured
after the workers have started (start-up is reported separately).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from exploresft_jax.eval import BENCHMARKS, load_benchmark  # noqa: E402
from exploresft_jax.rewards import VerifierConfig, VerifierPool, check_inline  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_dir = Path(__file__).resolve().parents[3] / "shared" / "data" / "benchmarks"
    p.add_argument("--data-dir", default=os.environ.get("EXPLORESFT_BENCHMARKS", str(default_dir)))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N golds (all by default)")
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)

    golds = [pr.answer for name in BENCHMARKS for pr in load_benchmark(name, args.data_dir)]
    if args.limit:
        golds = golds[:args.limit]
    preds = [f"The answer is $\\boxed{{{g}}}$." for g in golds]
    print(f"{len(golds)} golds from {len(BENCHMARKS)} benchmarks; {os.cpu_count()} CPUs; workers={args.workers}",
          file=sys.stderr)

    rows = []
    for label, cfg in (("default (string fast path)", VerifierConfig(timeout=args.timeout)),
                       ("full sympy path", VerifierConfig(timeout=args.timeout, string_match=False))):
        t0 = time.perf_counter()
        single = [check_inline(g, q, cfg) for g, q in zip(golds, preds)]
        t_single = time.perf_counter() - t0
        pool = VerifierPool(args.workers, cfg)
        t0 = time.perf_counter()
        pool.start()
        t_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        pooled = pool.check_batch(golds, preds)
        t_pool = time.perf_counter() - t0
        pool.close()
        ok_single = sum(v.correct for v in single)
        ok_pool = sum(v.correct for v in pooled)
        rows.append((label, len(golds), len(golds) / t_single, len(golds) / t_pool, t_start, ok_single, ok_pool))
        print(f"{label}: single {len(golds) / t_single:.0f}/s, pool {len(golds) / t_pool:.0f}/s", file=sys.stderr)

    print(f"| configuration | items | single process (items/s) | pool x{args.workers} (items/s) | speed-up "
          "| pool start (s) | correct single / pool |")
    print("|---|---|---|---|---|---|---|")
    for label, n, r1, rp, ts, c1, cp in rows:
        print(f"| {label} | {n} | {r1:.0f} | {rp:.0f} | {rp / r1:.2f}x | {ts:.1f} | {c1} / {cp} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
