#!/usr/bin/env python
"""Verifier accuracy against math-verify, throughput, and cost on adversarial predictions.

    python scripts/bench/verifier.py --data-dir ../shared/data/benchmarks [--workers 2] [--limit N] [--runs 3]
    python scripts/bench/verifier.py --accuracy-only          # side-by-side table only
    python scripts/bench/verifier.py --throughput-only
    python scripts/bench/verifier.py --adversarial [N] [--seed 0] [--json]   # N adversarial items (default 2000)

Accuracy: every (gold, prediction, equal) case of ``tests/data/verifier_cases.jsonl`` and
``tests/data/verifier_cases_extended.jsonl`` (the project's own cases, with category labels; ``--cases`` picks
other files, one table each) is judged by our verifier (default configuration, through the process pool) and by
math-verify's default call ``math_verify.verify(math_verify.parse(gold), math_verify.parse(prediction))``. The
table gives per-category accuracy of each and their false positives (True on a pair that is not equal).

Throughput: every benchmark gold against itself in ``The answer is $\\boxed{gold}$.``, in one process (the
verifier called in-process, soft timer only) and over the process pool (hard timeouts), for the default
configuration (identical normalised strings short-cut the parse) and for the full path (``string_match=False``:
no string short-cut; every item goes through the numeric or sympy comparison). Pool rates are measured after
the workers have started (start-up is reported separately). ``--runs`` repeats each measurement and reports the
median and the spread (min-max).

Adversarial: N predictions built by a seeded generator (deterministic; item i depends only on the seed, the
category list and i, so a smaller N is a prefix of a larger one), the categories in turn: power towers, deep
nesting (parentheses, braces, ``\\frac``, ``\\sqrt``, ``\\left(``), factorials and binomials of huge numbers,
megabyte strings, random unicode, unbalanced braces and brackets, huge numbers and big operators, integrals / sums /
products / limits / derivatives with large exponents, wide matrices (these nine have dedicated guards); and kinds
without one: symbolic powers of sums, parentheses 6-24 deep, long flat sums / sets / lists / unions, trigonometric
powers, complex powers, nested radicals, long lists of alternatives and function definitions, long relation
chains, long prose, decimals of hundreds of digits. ``--kinds guarded|unguarded`` runs one group only. Golds
are ordinary answers, or near-copies of the prediction.
Every item goes through the process pool on its own (``pool.check``) and its wall time is its cost; then the
whole list goes through once more as one batch (``check_batch`` over ``--workers``), as in an RL step. The table
gives the cost per item (mean, median, p99, max, in ms), the items over the timeout and over the timeout + 1 s,
the verdicts and the guards that decided (``guards.py``), overall and per category; ``--json`` prints the same
as one JSON object. The timeout defaults to 2 s in this mode.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

from exploresft_jax.rewards import VerifierConfig, VerifierPool, check_inline

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
CASES = DATA / "verifier_cases.jsonl"
CASE_FILES = (CASES, DATA / "verifier_cases_extended.jsonl")


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


# -- adversarial predictions -------------------------------------------------------------------------------
# The first seven are the kinds the pre-parse guards were written against; the next two have guards of their own
# (calculus_exponent, matrix_size); the rest have no dedicated guard and measure how the general defences (the
# parser-free rules, numeric spot checks first, the parser-cost screen and the symbolic budget) hold up.
GUARDED_CATEGORIES = ("power_tower", "deep_nesting", "factorial", "huge_string", "unicode", "unbalanced",
                      "big_number", "calculus", "wide_matrix")
UNGUARDED_CATEGORIES = ("symbolic_power", "paren_depth", "long_flat", "trig_tower", "complex_power",
                        "nested_radical", "alternatives", "relation_chain", "prose", "float_digits")
ADVERSARIAL_CATEGORIES = GUARDED_CATEGORIES + UNGUARDED_CATEGORIES
_ORDINARY_GOLDS = ("3", r"\frac{1}{2}", r"2\sqrt{3}", "x^2+1", "(1, 2)", "10", r"\pi", "1000000", "0.25",
                   r"\frac{\pi}{4}", "[0, 1)", "-7")


def _wrap(rng: random.Random, body: str) -> str:
    """The adversarial body boxed, bare (taken whole), or boxed after a sentence that also shows it."""
    r = rng.random()
    if r < 0.6:
        return r"\boxed{" + body + "}"
    if r < 0.8:
        return body
    return "Working through it step by step, the result is $" + body + r"$, so \boxed{" + body + "}."


def _power_tower(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return rng.choice([r"2^{10^{9}}", r"10^{10^{10}}", r"9^{999999999}", r"(10^{100})^{10^{100}}",
                           r"2^{2^{2^{2^{2^{30}}}}}", r"e^{e^{e^{100}}}", r"10^{10^{10}} - 10^{10^{10}} + 3",
                           r"\sqrt{2}^{10^{12}}", r"(1+10^{-50})^{10^{60}}", r"2^{3^{4^{5}}} \bmod 7"])
    height = rng.randint(3, 7)
    bases = [rng.choice(["2", "3", "9", "10", "99", "12345", "x", r"\pi", "e"]) for _ in range(height)]
    style = rng.randrange(4)
    if style == 0:                                   # a^{b^{c^{d}}}
        s = bases[-1]
        for b in reversed(bases[:-1]):
            s = f"{b}^{{{s}}}"
        return s
    if style == 1:                                   # a^b^c^d
        return "^".join(bases)
    if style == 2:                                   # a**b**c
        return "**".join(bases)
    s = bases[-1]                                    # \left(a\right)^{\left(b\right)^{c}}
    for b in reversed(bases[:-1]):
        s = rf"\left({b}\right)^{{{s}}}"
    return s


def _deep_nesting(rng: random.Random) -> tuple[str, str]:
    """``(body, gold)``: the body's value (when it has one) is the gold, or 2^-depth for nested fractions."""
    depth = int(10 ** rng.uniform(1.5, 3.6))         # about 30 to 4000 levels
    kind = rng.randrange(7)
    if kind == 0:
        return "(" * depth + "1" + ")" * depth, "1"
    if kind == 1:
        return "{" * depth + "2" + "}" * depth, "2"
    if kind == 2:
        s = "1"
        for _ in range(depth):
            s = r"\frac{" + s + "}{2}"
        return s, r"\frac{1}{2}"
    if kind == 3:
        return r"\sqrt{" * depth + "4" + "}" * depth, "2"
    if kind == 4:
        return r"\left(" * depth + "x" + r"\right)" * depth, "x"
    if kind == 5:
        return "[" * depth + "3" + "]" * depth, "3"
    return "-(" * depth + "5" + ")" * depth, "5"


def _factorial(rng: random.Random) -> str:
    n = rng.choice(["10000", "100000", "1000000", "10^{9}", "10^{100}", "2^{64}"])
    form = rng.randrange(7)
    if form == 0:
        return f"{n}!" if n.isdigit() else f"({n})!"
    if form == 1:
        return f"{n}!!" if n.isdigit() else f"({n})!!"
    if form == 2:
        return r"\frac{" + n + "!}{(" + n + "-1)!}"
    if form == 3:
        return r"((100!)!)!"
    if form == 4:
        return r"\binom{" + n + "}{" + rng.choice(["5", "1000", "500000"]) + "}"
    if form == 5:
        return r"\Gamma(" + n + ")"
    return f"{n}! - {n}! + 3"


def _huge_string(rng: random.Random) -> str:
    size = rng.choice([100_000, 300_000, 1_000_000])
    form = rng.randrange(7)
    if form == 0:
        return "x" * size + r" \boxed{3}"
    if form == 1:
        return "9" * size
    if form == 2:
        return r"\boxed{" + "1+" * (size // 2) + "1}"
    if form == 3:
        return r"\boxed{" + "".join(rng.choice("0123456789") for _ in range(size // 10)) + "}"
    if form == 4:
        return "".join(chr(rng.randrange(32, 127)) for _ in range(size // 10))
    if form == 5:
        return r"\frac" * (size // 5)
    return "$" * size


_UNICODE_RANGES = ((0x80, 0x2FF), (0x300, 0x36F), (0x2000, 0x206F), (0x2200, 0x22FF), (0x1D400, 0x1D7FF),
                   (0xFF00, 0xFFEF), (0xD800, 0xDFFF), (0x4E00, 0x9FFF), (0x0, 0x1F), (0x1F600, 0x1F64F))


def _unicode(rng: random.Random) -> str:
    n = int(10 ** rng.uniform(0, 3.7))
    body = "".join(chr(rng.randint(*rng.choice(_UNICODE_RANGES))) for _ in range(n))
    return _wrap(rng, body) if rng.random() < 0.7 else body


def _unbalanced(rng: random.Random) -> str:
    k = int(10 ** rng.uniform(0.5, 4.5))
    form = rng.randrange(8)
    if form == 0:
        return r"\boxed{" * k
    if form == 1:
        return r"\boxed{" + "{" * k + "1"
    if form == 2:
        return r"\boxed{1" + "}" * k
    if form == 3:
        return r"\boxed{" + r"\left(" * k + "1}"
    if form == 4:
        return r"\boxed{" + r"\frac{1}{" * k + "}"
    if form == 5:
        return r"\boxed{" + "(" * k + "2" + ")" * (k // 2) + "}"
    if form == 6:
        return r"\boxed{\begin{pmatrix}" + "1&" * k + "}"
    return r"\boxed{" + "".join(rng.choice("{}()[]") for _ in range(k)) + "}"


def _big_number(rng: random.Random) -> str:
    digits = int(10 ** rng.uniform(2, 5.5))
    form = rng.randrange(7)
    if form == 0:
        return "1" + "0" * digits
    if form == 1:
        return "0." + "3" * digits
    if form == 2:
        return f"10^{{{digits}}}"
    if form == 3:
        return f"1e{digits}"
    if form == 4:
        return r"\sum_{k=1}^{10^{12}} k"
    if form == 5:
        return r"\prod_{k=1}^{10^{6}} k"
    return r"\int_0^{10^{9}} x^{10^{6}} \, dx"


def _calculus(rng: random.Random) -> str:
    e = rng.choice([80, 150, 300, 1000, 5000])
    v = rng.choice("xtu")
    forms = [rf"\int_0^{{\infty}} e^{{-{v}^{{{e}}}}} d{v}", rf"\sum_{{n=1}}^{{\infty}} n^{{-{e}}}",
             rf"\int_0^{{1}} {v}^{{{e}}} \sin({v}) \, d{v}", rf"\prod_{{k=1}}^{{\infty}} (1 - {v}^{{k}})^{{{e}}}",
             rf"\lim_{{{v} \to 0}} \frac{{\sin({v})^{{{e}}}}}{{{v}^{{{e}}}}}",
             rf"\frac{{d^{{{e}}}}}{{d{v}^{{{e}}}}} {v}^{{{2 * e}}}",
             rf"\int_0^1 \int_0^1 (x y)^{{{e}}} \, dx \, dy"]
    k = rng.randint(1, 3)
    return " + ".join(rng.choice(forms) for _ in range(k))


def _wide_matrix(rng: random.Random) -> tuple[str, str]:
    n = rng.choice([50, 150, 300, 500, 1000])
    cell = rng.choice(["{i}", "x^{{{i}}}", r"\frac{{{i}}}{{7}}", r"\sqrt{{{i}}}", "{i}.5"])
    row = "&".join(cell.format(i=i) for i in range(n))
    env = rng.choice(["pmatrix", "bmatrix"])
    body = rf"\begin{{{env}}}" + row + rf"\end{{{env}}}"
    r = rng.random()
    if r < 0.3:   # the same matrix with one entry changed
        gold = body.replace("&" + cell.format(i=n // 2) + "&", "&" + cell.format(i=n + 1) + "&", 1)
    elif r < 0.5:
        gold = r"\begin{pmatrix}1&2\\3&4\end{pmatrix}"
    else:
        gold = rng.choice(_ORDINARY_GOLDS)
    return body, gold


def _symbolic_power(rng: random.Random) -> str:
    k = rng.choice([60, 120, 250, 500, 2000, 9000])
    return rng.choice([f"(x+y+z)^{{{k}}}", f"(x+1)^{{{k}}} - (x-1)^{{{k}}}", f"(a+b)^{{{k}}}(a-b)^{{{k}}}",
                       rf"\binom{{x}}{{{k}}}", f"x^{{{k}}} + y^{{{k}}} - z^{{{k}}}", f"(1+x)^{{{k}}}/(1-x)^{{{k}}}"])


def _paren_depth(rng: random.Random) -> tuple[str, str]:
    d = rng.randint(6, 24)
    inner = rng.choice(["x+1", "a-b", "2y", r"\frac{x}{2}+1"])
    op = rng.choice(["", "2", "-", "x"])
    return (op + "(") * d + inner + ")" * d, rng.choice(["x+1", "3", "a-b"])


def _long_flat(rng: random.Random) -> str:
    n = rng.choice([60, 150, 300, 600])
    form = rng.randrange(6)
    if form == 0:
        return "+".join(f"x^{{{i}}}" for i in range(n))
    if form == 1:
        return r"\{" + ",".join(f"a_{{{i}}}" for i in range(n)) + r"\}"
    if form == 2:
        return ",".join(str(rng.randint(-999, 999)) for _ in range(n))
    if form == 3:
        return "+".join(rf"\frac{{1}}{{{i + 2}}}" for i in range(n))
    if form == 4:
        return r"\cup".join(f"({i},{i}.5)" for i in range(n))
    return "".join(rng.choice("xyzabc") for _ in range(n))


def _trig_tower(rng: random.Random) -> str:
    k = rng.choice([20, 60, 150, 400])
    return rng.choice([rf"\sin^{{{k}}}(x) + \cos^{{{k}}}(x)", rf"\tan^{{{k}}}(x)\cot^{{{k}}}(x)",
                       rf"\sin(\sin(\sin(\sin(\sin(x)))))^{{{k}}}", rf"(\sin x + \cos x)^{{{k}}}",
                       rf"\prod_{{j=1}}^{{{k}}} \cos(2^j x)"])


def _complex_power(rng: random.Random) -> str:
    k = rng.choice([100, 1000, 5000, 9999])
    return rng.choice([f"(1+i)^{{{k}}}", f"(3+4i)^{{{k}}} / 5^{{{k}}}", rf"e^{{i \pi {k}}}",
                       rf"\left(\frac{{1+\sqrt{{3}}i}}{{2}}\right)^{{{k}}}", f"(2+i)^{{{k}}}(2-i)^{{{k}}}"])


def _nested_radical(rng: random.Random) -> str:
    d = rng.randint(6, 20)
    s = "2"
    for _ in range(d):
        s = rng.choice([rf"\sqrt{{2+{s}}}", rf"\sqrt[3]{{1+{s}}}", rf"\frac{{1}}{{1+{s}}}"])
    return s


def _alternatives(rng: random.Random) -> str:
    n = rng.choice([8, 20, 60])
    sep = rng.choice([r" \text{ or } ", " and ", ", ", r" \quad "])
    v = rng.choice("xyt")
    return sep.join(f"f({v})={v}^{{{i}}}+{i}" for i in range(n))


def _relation_chain(rng: random.Random) -> str:
    n = rng.choice([10, 40, 120])
    return rng.choice([" = ".join(f"{i}x+{i}" for i in range(n)), r" \approx ".join(str(3 + i) for i in range(n)),
                       "V_1:V_2 = " + ":".join(str(i + 1) for i in range(n)),
                       "x = " + r" \approx ".join(rf"\sqrt{{{i + 2}}}" for i in range(n))])


def _prose(rng: random.Random) -> str:
    n = rng.choice([2000, 20000, 200000])
    words = ["the", "so", "we", "get", "是", "所以", "一共", "十二", "个", "分之", "3", "5,5", "=", "is", "$x$", "。"]
    return " ".join(rng.choice(words) for _ in range(n // 4)) + rng.choice(["", ".", "。", " 7."])


def _float_digits(rng: random.Random) -> str:
    n = rng.choice([200, 600, 990])
    d = "".join(rng.choice("0123456789") for _ in range(n))
    return rng.choice([f"0.{d}", f"1.{d} \times 10^{{-300}}", rf"\frac{{1.{d}}}{{3.{d}}}", f"{d[:300]},{d[300:600]}"])


def _wrapped(make):
    """An item whose prediction is `make(rng)` in a random answer wrapper, against the ordinary gold."""
    return lambda rng, gold: (gold, _wrap(rng, make(rng)))


def _wrapped_with_gold(make):
    """An item whose generator gives (prediction body, its own gold), the body in a random answer wrapper."""

    def item(rng, gold):
        body, gold = make(rng)
        return gold, _wrap(rng, body)

    return item


def _alternatives_item(rng, gold):
    body = _alternatives(rng)
    gold = body if rng.random() < 0.3 else body.replace("+1", "+2", 1)
    return gold, _wrap(rng, body.replace("f(x)", "f(t)").replace("x^", "t^") if rng.random() < 0.5 else body)


def _big_number_item(rng, gold):
    return gold, _wrap(rng, _big_number(rng))


# category -> (rng, ordinary gold) -> (gold, prediction); the random draws of each are in a fixed order, so the
# items of a seed never change
_GENERATORS = {
    "power_tower": _wrapped(_power_tower), "deep_nesting": _wrapped_with_gold(_deep_nesting),
    "factorial": _wrapped(_factorial), "huge_string": lambda rng, gold: (gold, _huge_string(rng)),
    "calculus": _wrapped(_calculus), "wide_matrix": _wrapped_with_gold(_wide_matrix),
    "symbolic_power": _wrapped(_symbolic_power), "paren_depth": _wrapped_with_gold(_paren_depth),
    "long_flat": _wrapped(_long_flat), "trig_tower": _wrapped(_trig_tower), "complex_power": _wrapped(_complex_power),
    "nested_radical": _wrapped(_nested_radical), "alternatives": _alternatives_item,
    "relation_chain": _wrapped(_relation_chain), "prose": lambda rng, gold: (gold, _prose(rng)),
    "float_digits": _wrapped(_float_digits), "unicode": lambda rng, gold: (gold, _unicode(rng)),
    "unbalanced": lambda rng, gold: (gold, _unbalanced(rng)),
}


def adversarial_items(n: int, seed: int = 0, categories=ADVERSARIAL_CATEGORIES) -> list[tuple[str, str, str]]:
    """``n`` adversarial ``(category, gold, prediction)`` triples, the categories in turn. Item i depends only on
    ``seed``, the category list and i (``random.Random`` seeded with a string is the same on every run and
    platform)."""
    items = []
    for i in range(n):
        cat = categories[i % len(categories)]
        rng = random.Random(f"adversarial:{seed}:{i}")
        gold = rng.choice(_ORDINARY_GOLDS)
        gold, pred = _GENERATORS.get(cat, _big_number_item)(rng, gold)
        items.append((cat, gold, pred))
    return items


_GUARD_RE = re.compile(r"(\w+) guard:")


def _cost_stats(costs_ms: list[float]) -> dict:
    xs = sorted(costs_ms)
    return {"mean": statistics.fmean(xs), "median": statistics.median(xs),
            "p99": xs[max(0, math.ceil(0.99 * len(xs)) - 1)], "max": xs[-1]}


def adversarial(n: int, seed: int, workers: int, timeout: float, categories=ADVERSARIAL_CATEGORIES) -> dict:
    """Cost and verdicts of ``n`` adversarial items through the pool (see the module docstring)."""
    items = adversarial_items(n, seed, categories)
    cfg = VerifierConfig(timeout=timeout)
    with VerifierPool(workers, cfg) as pool:
        t0 = time.perf_counter()
        pool.start()
        start_s = time.perf_counter() - t0
        rows = []
        for cat, gold, pred in items:
            t0 = time.perf_counter()
            v = pool.check(gold, pred)
            cost = (time.perf_counter() - t0) * 1000
            m = _GUARD_RE.search(v.reason)
            rows.append((cat, cost, v.status, m.group(1) if m else None))
        restarts = pool.restarts
        t0 = time.perf_counter()
        batch = pool.check_batch([g for _, g, _ in items], [p for _, _, p in items])
        batch_s = time.perf_counter() - t0

    def summary(sel) -> dict:
        costs = [c for _, c, _, _ in sel]
        return {"items": len(sel), "cost_ms": _cost_stats(costs),
                "over_timeout": sum(c > timeout * 1000 for c in costs),
                "over_timeout_plus_1s": sum(c > (timeout + 1) * 1000 for c in costs),
                "verdicts": dict(collections.Counter(s for _, _, s, _ in sel).most_common()),
                "guards": dict(collections.Counter(g for _, _, _, g in sel if g).most_common())}

    out = {"items": n, "seed": seed, "workers": workers, "timeout_s": timeout, "cpus": os.cpu_count(),
           "pool_start_s": start_s, "worker_restarts": restarts, **summary(rows),
           "batch": {"wall_s": batch_s, "items_per_s": n / batch_s if batch_s else None,
                     "same_verdicts": sum(b.status == s for b, (_, _, s, _) in zip(batch, rows))},
           "categories": {c: summary([r for r in rows if r[0] == c]) for c in categories
                          if any(r[0] == c for r in rows)}}
    return out


def print_adversarial(res: dict) -> None:
    t = res["timeout_s"]
    print(f"{res['items']} adversarial items (seed {res['seed']}), timeout {t:g} s, one item at a time over a pool "
          f"of {res['workers']} on {res['cpus']} CPUs; pool start {res['pool_start_s']:.1f} s; "
          f"workers killed {res['worker_restarts']}")
    print()
    print(f"| category | items | mean ms | median ms | p99 ms | max ms | > {t:g} s | > {t + 1:g} s | verdicts "
          f"| guards |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in [*res["categories"].items(), ("**all**", res)]:
        c = r["cost_ms"]
        verdicts = ", ".join(f"{k} {v}" for k, v in r["verdicts"].items())
        guards = ", ".join(f"{k} {v}" for k, v in r["guards"].items()) or "-"
        print(f"| {name} | {r['items']} | {c['mean']:.1f} | {c['median']:.1f} | {c['p99']:.0f} | {c['max']:.0f} "
              f"| {r['over_timeout']} | {r['over_timeout_plus_1s']} | {verdicts} | {guards} |")
    b = res["batch"]
    print()
    print(f"one batch of all {res['items']} over {res['workers']} workers: {b['wall_s']:.1f} s "
          f"({b['items_per_s']:.0f} items/s); verdicts as item by item: {b['same_verdicts']}/{res['items']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_dir = Path(__file__).resolve().parents[3] / "shared" / "data" / "benchmarks"
    p.add_argument("--data-dir", default=os.environ.get("EXPLORESFT_BENCHMARKS", str(default_dir)))
    p.add_argument("--cases", nargs="+", default=[str(f) for f in CASE_FILES],
                   help="JSONL files of {category, gold, prediction, equal}; one table each")
    p.add_argument("--kinds", choices=("all", "guarded", "unguarded"), default="all",
                   help="with --adversarial: every category, those with dedicated guards, or the others")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N golds (all by default)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per item (default 5, or 2 with --adversarial)")
    p.add_argument("--runs", type=int, default=3, help="repeats of each throughput measurement")
    p.add_argument("--seed", type=int, default=0, help="seed of the adversarial generator")
    p.add_argument("--json", action="store_true", help="with --adversarial: print one JSON object, not a table")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--accuracy-only", action="store_true")
    which.add_argument("--throughput-only", action="store_true")
    which.add_argument("--adversarial", type=int, nargs="?", const=2000, default=None, metavar="N",
                       help="only the adversarial cost benchmark, over N items (default 2000)")
    args = p.parse_args(argv)

    if args.adversarial is not None:
        cats = {"all": ADVERSARIAL_CATEGORIES, "guarded": GUARDED_CATEGORIES,
                "unguarded": UNGUARDED_CATEGORIES}[args.kinds]
        res = adversarial(args.adversarial, args.seed, args.workers, 2.0 if args.timeout is None else args.timeout,
                          cats)
        if args.json:
            print(json.dumps(res))
        else:
            print_adversarial(res)
        return 0
    if args.timeout is None:
        args.timeout = 5.0

    if not args.throughput_only:
        for path in args.cases:
            cases = load_cases(path)
            print(f"{len(cases)} cases from {path}", file=sys.stderr)
            print(f"{Path(path).name}: {len(cases)} cases")
            print()
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
