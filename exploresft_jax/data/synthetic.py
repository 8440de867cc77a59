"""A synthetic verifiable arithmetic task for CPU runs and tests.

Problems: add two multi-digit numbers. Solutions show their work in one of several styles and end with a
boxed answer. Negative ("UL") records are confident-looking solutions with a systematic bug (a dropped
carry), the kind of wrong self-generated answer OXA pushes down.
"""

from __future__ import annotations

import random


def _left_to_right(a: int, b: int) -> str:
    tens = b // 10 * 10
    mid = a + tens
    return f"{a} + {tens} = {mid}, {mid} + {b - tens} = {a + b}."


def _columns(a: int, b: int, drop_carry: bool = False) -> tuple[str, int]:
    da, db = str(a)[::-1], str(b)[::-1]
    carry, digits, steps = 0, [], []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x} + {y}" + (f" + {carry}" if carry else "") + f" = {s}")
        digits.append(s % 10)
        carry = 0 if drop_carry else s // 10
    if carry:
        digits.append(carry)
    total = int("".join(str(d) for d in reversed(digits)))
    return "; ".join(steps) + ".", total


def arithmetic_records(n: int, *, seed: int = 0, digits: int = 2, negatives: bool = False,
                       bug_rate: float = 0.0) -> list[dict]:
    """n records {"prompt", "response", "answer", "loss_type"}.

    negatives=False: solutions in the left-to-right or column style; a fraction `bug_rate` of them use the
    column style with every carry dropped (a plausible systematic bug in a "base corpus": wrong whenever a carry
    occurs, still loss_type "ce"). negatives=True: only dropped-carry solutions that are wrong (loss_type "ul").
    """
    rng = random.Random(seed)
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    out = []
    while len(out) < n:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if negatives:
            work, total = _columns(a, b, drop_carry=True)
            if total == a + b:
                continue  # no carry happened: not a wrong answer
            style = "ul"
        elif bug_rate > 0 and rng.random() < bug_rate:
            (work, total), style = _columns(a, b, drop_carry=True), "ce"
        elif rng.random() < 0.5:
            work, total, style = _left_to_right(a, b), a + b, "ce"
        else:
            (work, total), style = _columns(a, b), "ce"
        out.append({"prompt": f"What is {a} + {b}?", "response": f"{work} So the answer is \\boxed{{{total}}}.",
                    "answer": str(a + b), "loss_type": style})
    return out
