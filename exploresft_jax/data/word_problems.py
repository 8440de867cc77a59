"""Multi-step arithmetic word problems with chain-of-thought in several styles: the demo's verifiable task.

A problem: "Ava has 37 coins. Then Ava finds 5 more, then gives away 8. How many coins does Ava have now?
Compute 37 + 5 - 8."
(a start value 20..99 and two add / subtract steps of 2..9; every running value stays in 0..199).

Solution styles (all end with "The answer is \\boxed{N}."):
  direct:  "37 + 5 = 42. 42 - 8 = 34."                                 (the common style of the base corpus)
  split:   "37 + 5 = 37 + 3 + 2 = 40 + 2 = 42. ..."  (through the round ten when a carry or borrow happens; rare)
  columns: "37 + 5: 7 + 5 = 12, carry 1; 3 + 1 = 4; 42. ..."          (digit columns with carries; rare)
A *buggy* direct solution drops every carry and borrow: the ones digit is right, the tens are never adjusted
(37 + 5 = 32; 42 - 8 = 44), the confident systematic mistake a base model learns from a flawed corpus.

`base_corpus` is what the tiny base model is pretrained on (mostly the direct style, part of it buggy);
`teacher_solutions` gives verified solutions in every style (the teacher data of OXA and SFT);
`problems` draws problems without solutions (held-out evaluation, RL prompts).
"""

from __future__ import annotations

import random

STYLES = ("direct", "split", "columns")
NAMES = ("Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana")
OBJECTS = ("apples", "coins", "books", "cards", "shells", "stamps")
ADD_VERBS = ("buys", "finds", "gets", "wins")
SUB_VERBS = ("gives away", "loses", "sells", "uses")


def _digits(x: int) -> tuple[int, int]:
    """(tens, ones) of 0 <= x <= 199, the hundreds folded into the tens (137 -> (13, 7))."""
    return x // 10, x % 10


def _add_wrong(a: int, b: int) -> int:
    """a + b (b < 10) with the carry dropped: the tens stay, the ones keep only their last digit."""
    at, ao = _digits(a)
    return at * 10 + (ao + b) % 10


def _sub_wrong(a: int, b: int) -> int:
    """a - b (b < 10) with the borrow dropped: the ones borrow a ten they never pay back (the tens stay)."""
    at, ao = _digits(a)
    return at * 10 + (ao - b) % 10


def _step_direct(x: int, op: str, y: int, buggy: bool) -> tuple[str, int]:
    z = (x + y if op == "+" else x - y) if not buggy else (_add_wrong(x, y) if op == "+" else _sub_wrong(x, y))
    return f"{x} {op} {y} = {z}.", z


def _step_split(x: int, op: str, y: int) -> tuple[str, int]:
    z = x + y if op == "+" else x - y
    if z // 10 == x // 10:  # no carry or borrow: nothing to split
        return f"{x} {op} {y} = {z}.", z
    first = 10 - x % 10 if op == "+" else x % 10  # the step to the round ten
    if first == 0:  # x is already round (subtracting from 40): go down a full ten's worth of ones
        first = y
    mid = x + first if op == "+" else x - first
    return f"{x} {op} {y} = {x} {op} {first} {op} {y - first} = {mid} {op} {y - first} = {z}.", z


def _step_columns(x: int, op: str, y: int) -> tuple[str, int]:
    xt, xo = _digits(x)
    if op == "+":
        s = xo + y
        carry = s // 10
        ones = f"{xo} + {y} = {s}" + (", carry 1" if carry else "")
        tens = f"{xt} + 1 = {xt + 1}" if carry else f"{xt}"
        z = x + y
    else:
        borrow = xo < y
        top = xo + 10 if borrow else xo
        ones = f"{top} - {y} = {top - y}" + (", borrow 1" if borrow else "")
        tens = f"{xt} - 1 = {xt - 1}" if borrow else f"{xt}"
        z = x - y
    return f"{x} {op} {y}: {ones}; {tens}; {z}.", z


def solve(start: int, steps: list[tuple[str, int]], style: str, buggy: bool = False) -> tuple[str, int]:
    """(worked solution text, its final value) in `style`; buggy=True: the direct style without carries/borrows."""
    if buggy and style != "direct":
        raise ValueError("only the direct style has a buggy variant")
    x, parts = start, []
    for op, y in steps:
        if style == "direct":
            text, x = _step_direct(x, op, y, buggy)
        elif style == "split":
            text, x = _step_split(x, op, y)
        elif style == "columns":
            text, x = _step_columns(x, op, y)
        else:
            raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
        parts.append(text)
    return " ".join(parts) + f" The answer is \\boxed{{{x}}}.", x


def bug_values(start: int, steps: list[tuple[str, int]]) -> set[int]:
    """Every wrong value the dropped-carry/borrow bug gives: the carry or borrow dropped at any non-empty subset of
    the steps where one happens (a model that has half-learnt the bug drops it at some steps only)."""
    values = {start}
    for op, y in steps:
        values = {v for x in values
                  for v in ((x + y if op == "+" else x - y), (_add_wrong(x, y) if op == "+" else _sub_wrong(x, y)))}
    correct = start + sum(y if op == "+" else -y for op, y in steps)
    return values - {correct}


def _draw(rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
    """A start value 20..99 and two steps of 2..9 whose running values stay in 0..199."""
    while True:
        x = start = rng.randint(20, 99)
        steps = []
        for _ in range(2):
            op = rng.choice("+-")
            y = rng.randint(2, 9)
            nx = x + y if op == "+" else x - y
            if not 0 <= nx <= 199:
                break
            steps.append((op, y))
            x = nx
        if len(steps) == 2:
            return start, steps


def _question(rng: random.Random, start: int, steps: list[tuple[str, int]]) -> str:
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    acts = [f"{rng.choice(ADD_VERBS) if op == '+' else rng.choice(SUB_VERBS)} {y}" + (" more" if op == "+" else "")
            for op, y in steps]
    expr = " ".join([str(start)] + [f"{op} {y}" for op, y in steps])
    # the expression last: the numbers sit just before the answer, where a tiny model learns to read them
    return (f"{name} has {start} {obj}. Then {name} {acts[0]}, then {acts[1]}. How many {obj} does {name} have "
            f"now? Compute {expr}.")


def problems(n: int, *, seed: int = 0, exclude: set[str] | frozenset = frozenset()) -> list[dict]:
    """n distinct problems {"prompt", "answer", "start", "steps"} whose prompt is not in `exclude`."""
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    while len(out) < n:
        start, steps = _draw(rng)
        q = _question(rng, start, steps)
        if q in seen:
            continue
        seen.add(q)
        _, value = solve(start, steps, "direct")
        out.append({"prompt": q, "answer": str(value), "start": start, "steps": steps,
                    "bug_answers": sorted(bug_values(start, steps))})
    return out


def style_of(response: str) -> str:
    """The solution style a response is written in ("columns", "split", "direct" or "other")."""
    if ": " in response and ("; " in response):
        return "columns"
    if any(part.count("=") >= 3 for part in response.split(". ")):
        return "split"
    if response.count("=") >= 1:
        return "direct"
    return "other"


def base_corpus(n: int, *, seed: int = 0, style_probs: tuple[float, float, float] = (0.84, 0.10, 0.06),
                bug_rate: float = 0.3, exclude: set[str] | frozenset = frozenset()) -> list[dict]:
    """n pretraining records {"prompt", "response", "answer", "style", "loss_type": "ce"}.

    Styles are drawn with `style_probs` (direct, split, columns); a fraction `bug_rate` of the direct solutions
    drops carries and borrows (their boxed value is usually wrong, yet they are trained on as if correct).
    """
    rng = random.Random(seed + 1_000_003)
    out = []
    for p in problems(n, seed=seed, exclude=exclude):
        style = rng.choices(STYLES, weights=style_probs)[0]
        buggy = style == "direct" and rng.random() < bug_rate
        text, _ = solve(p["start"], p["steps"], style, buggy)
        out.append({"prompt": p["prompt"], "response": text, "answer": p["answer"],
                    "style": style + ("-buggy" if buggy else ""), "loss_type": "ce"})
    return out


def teacher_solutions(probs: list[dict]) -> list[dict]:
    """One correct solution per distinct style for each problem: {"prompt", "response", "answer", "style"}
    (a split solution without any carry or borrow is the direct one, and is given once)."""
    out = []
    for p in probs:
        texts = []
        for s in STYLES:
            text = solve(p["start"], p["steps"], s)[0]
            if text not in texts:
                texts.append(text)
                out.append({"prompt": p["prompt"], "response": text, "answer": p["answer"], "style": s})
    return out
