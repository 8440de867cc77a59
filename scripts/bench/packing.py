"""Padding waste of the SFT / OXA batches: no packing vs example-count packing vs token-budget packing.

Runs the pipeline's own step planner (`exploresft_jax.data.pipeline.StepSource.plan`, the code that lays out
every training step) over a long-tailed length distribution like the OXA release's data: log-normal lengths with
a median of about 6k tokens and a p95 of about 20k, examples over max_length dropped (as the release does).
Pure numpy, no model: it runs in seconds.

For each batching mode it reports, over `--steps` steps:
  * padding: padding tokens computed / all tokens computed, where computed rows are every row of every
    micro-batch the train step runs (all-padding micro-batches are skipped by the step, so they cost nothing);
  * compute vs none: token positions computed per step, relative to no packing;
  * examples, rows and micro-batches per step (means), steps per epoch of the CE pool;
  * shapes: the number of distinct [micro, rows_per_micro, max_length] step shapes (one compile each).

    python scripts/bench/packing.py                    # OXA's settings: 128 CE + 128 UL, T = 32768, 8 rows/micro
    python scripts/bench/packing.py --json             # the same as JSON
    python scripts/bench/packing.py --rows-per-micro 4 --steps 1000
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from exploresft_jax.data.pipeline import StepSource, TokenizedSet


def lengths(n: int, *, median: float, p95: float, cap: int, seed: int) -> np.ndarray:
    """n log-normal lengths with the given median and p95 (before the cap); lengths over cap (and under 16) are
    dropped and redrawn."""
    mu, sigma = math.log(median), math.log(p95 / median) / 1.6449
    rng = np.random.default_rng(seed)
    out = np.empty(0, np.int64)
    while len(out) < n:
        x = rng.lognormal(mu, sigma, 2 * n).astype(np.int64)
        out = np.concatenate([out, x[(x >= 16) & (x <= cap)]])
    return out[:n]


def pool_of(lens: np.ndarray) -> TokenizedSet:
    """A TokenizedSet whose examples have these lengths; zero-stride views, so no token memory is used."""
    views = [np.broadcast_to(np.int32(1), (int(n),)) for n in lens]
    return TokenizedSet(views, views, np.ones(len(lens), np.float32))


def measure(pools, *, mode: str, micro: int, per_micro: int, t: int, steps: int, seed: int) -> dict:
    lens = [np.asarray([len(x) for x in p.ids]) for p, _, _ in pools]
    src = StepSource(pools, max_length=t, micro_batches=micro, rows_per_micro=per_micro, pad_id=0, seed=seed,
                     packing=mode)
    real = computed = examples = rows = busy_micro = 0
    shapes = set()
    for s in range(steps):
        plan = src.plan(s)
        shapes.add((len(plan), per_micro, t))
        for m in plan:
            full = [e for e in m if e is not None]
            if full:
                busy_micro += 1
                computed += per_micro * t
            for p, members in full:
                real += int(lens[p][members].sum())
                examples += len(members)
                rows += 1
    return {"mode": mode, "first_micro": micro, "rows_per_micro": per_micro,
            "padding": 1.0 - real / computed, "computed_tokens_per_step": computed / steps,
            "real_tokens_per_step": real / steps, "examples_per_step": examples / steps, "rows_per_step": rows / steps,
            "micro_computed_per_step": busy_micro / steps, "steps_per_epoch": src.steps_per_epoch(),
            "shapes": len(shapes), "buckets": list(src.micro_buckets)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ce", type=int, default=128, help="CE examples per step (token mode: CE rows per step)")
    p.add_argument("--ul", type=int, default=128, help="UL examples per step (token mode: UL rows per step)")
    p.add_argument("--max-length", type=int, default=32768)
    p.add_argument("--rows-per-micro", type=int, default=8, help="rows per micro-batch (8: one per v5e-8 chip)")
    p.add_argument("--first-micro", type=int, default=8,
                   help="example packing: the first micro-batch bucket (doubled when a step needs more)")
    # log-normal parameters before dropping the examples over max_length; the kept lengths then have a median
    # of about 5.9k and a p95 of about 20k tokens
    p.add_argument("--median", type=float, default=6100, help="median of the log-normal (before the cap)")
    p.add_argument("--p95", type=float, default=23000, help="p95 of the log-normal (before the cap)")
    p.add_argument("--pool", type=int, default=12800, help="examples per pool (CE and UL)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args()

    t, per = a.max_length, a.rows_per_micro
    ce_len = lengths(a.pool, median=a.median, p95=a.p95, cap=t, seed=a.seed)
    ul_len = lengths(a.pool, median=a.median, p95=a.p95, cap=t, seed=a.seed + 1)
    pools = [(pool_of(ce_len), a.ce, False), (pool_of(ul_len), a.ul, True)]
    rows = a.ce + a.ul
    runs = [("none (today)", dict(mode="none", micro=rows // per)),
            (f"examples, first bucket {a.first_micro}", dict(mode="examples", micro=a.first_micro)),
            (f"examples, first bucket {rows // per}", dict(mode="examples", micro=rows // per)),
            ("tokens", dict(mode="tokens", micro=rows // per))]
    results = []
    for name, kw in runs:
        r = measure(pools, per_micro=per, t=t, steps=a.steps, seed=a.seed, **kw)
        r["name"] = name
        results.append(r)
    base = results[0]["computed_tokens_per_step"]
    for r in results:
        r["compute_vs_none"] = r["computed_tokens_per_step"] / base
    both = np.concatenate([ce_len, ul_len])
    data = {"median": float(np.median(both)), "p95": float(np.percentile(both, 95)), "mean": float(both.mean()),
            "max_length": t, "ce_per_step": a.ce, "ul_per_step": a.ul, "rows_per_micro": per, "steps": a.steps}
    if a.json:
        print(json.dumps({"data": data, "results": results}, indent=2))
        return
    print(f"lengths: median {data['median']:.0f}, p95 {data['p95']:.0f}, mean {data['mean']:.0f} tokens "
          f"(cap {t}); {a.ce} CE + {a.ul} UL per step; {per} rows x {t} per micro-batch; {a.steps} steps\n")
    print("| batching | padding | compute vs none | examples/step | rows/step | micro-batches run/step "
          "| steps/epoch | shapes (buckets) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {100 * r['padding']:.1f}% | {r['compute_vs_none']:.3f} | {r['examples_per_step']:.1f} "
              f"| {r['rows_per_step']:.1f} | {r['micro_computed_per_step']:.2f} | {r['steps_per_epoch']} "
              f"| {r['shapes']} ({', '.join(map(str, r['buckets']))}) |")


if __name__ == "__main__":
    main()
