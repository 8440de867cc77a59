"""Multi-step arithmetic word problems in three difficulty tiers: the demo's verifiable task.

A problem: "Ava has 37 coins. Then Ava finds 5 more, then gives away 8, then buys 6 more. How many coins does
Ava have now? Compute 37 + 5 - 8 + 6."
(a start value 20..99 and K = 2, 3 or 4 add / subtract steps of 2..9: the tier is K; every running value, in
any order of the steps, stays in 0..199).

A worked solution applies the steps one at a time, in any order (each order is correct: the changes commute),
with a linking word between steps:
    "37 - 8 = 29. Then 29 + 5 = 34. Now 34 + 6 = 40. The answer is \\boxed{40}."
so a model that writes them keeps real choices among equivalent tokens: which step comes next (K! orders) and
which of the LINKS joins two steps. The results after "=" are facts: one right value each.

A *buggy* solution drops every carry and borrow: the ones digit is right, the tens never move
(37 + 5 = 32; 42 - 8 = 44). `base_corpus` (what the demo's base model is pretrained on) solves the easy tier
correctly and writes the harder tiers mostly buggy (`bug_rates`), and holds few hard problems: the base model
learns the procedure on easy problems only, and its mistakes on hard ones are confident and systematic.
`teacher_solutions` are always correct, in every tier: the teacher knows what the base lacks, and its
solutions look more unfamiliar to the base the harder the problem.
"""

from __future__ import annotations

import itertools
import random

TIERS = (2, 3, 4)  # steps per problem
LINKS = ("Then", "Next", "Now", "So")
NAMES = ("Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana")
OBJECTS = ("apples", "coins", "books", "cards", "shells", "stamps")
ADD_VERBS = ("buys", "finds", "gets", "wins")
SUB_VERBS = ("gives away", "loses", "sells", "uses")


def apply(x: int, op: str, y: int, buggy: bool = False) -> int:
    """x op y (y < 10); buggy=True drops the carry or borrow: the tens of x stay, the ones wrap around."""
    if not buggy:
        return x + y if op == "+" else x - y
    return x // 10 * 10 + ((x % 10) + (y if op == "+" else -y)) % 10


def carries(start: int, steps: list[tuple[str, int]]) -> int:
    """How many of the steps (applied in the given order, correctly) carry or borrow."""
    x, n = start, 0
    for op, y in steps:
        z = apply(x, op, y)
        n += z // 10 != x // 10
        x = z
    return n


def solve(start: int, steps: list[tuple[str, int]], links: tuple[int, ...] | None = None,
          buggy: bool = False) -> tuple[str, int]:
    """(worked solution text, its final value): the steps in the given order, LINKS[links[i]] before step
    i + 1 (default: the first link everywhere); buggy=True drops every carry and borrow."""
    links = links if links is not None else (0,) * (len(steps) - 1)
    x, parts = start, []
    for i, (op, y) in enumerate(steps):
        z = apply(x, op, y, buggy)
        parts.append(("" if i == 0 else LINKS[links[i - 1]] + " ") + f"{x} {op} {y} = {z}.")
        x = z
    return " ".join(parts) + f" The answer is \\boxed{{{x}}}.", x


def _in_range(start: int, steps) -> bool:
    x = start
    for op, y in steps:
        x = apply(x, op, y)
        if not 0 <= x <= 199:
            return False
    return True


def orders(start: int, steps: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Every distinct order of the steps (all valid by construction of `problems`)."""
    return [list(p) for p in dict.fromkeys(itertools.permutations(steps))]


def bug_values(start: int, steps: list[tuple[str, int]]) -> set[int]:
    """Every wrong value the dropped-carry/borrow bug gives, in any order of the steps, with the carry or
    borrow dropped at any subset of them (a model that has half-learnt the bug drops it at some steps only)."""
    values = set()
    for order in orders(start, steps):
        vals = {start}
        for op, y in order:
            vals = {apply(x, op, y, b) for x in vals for b in (False, True)}
        values |= vals
    correct = start + sum(y if op == "+" else -y for op, y in steps)
    return values - {correct}


def _draw(rng: random.Random, k: int) -> tuple[int, list[tuple[str, int]]]:
    """A start value 20..99 and k steps of 2..9 whose running values stay in 0..199 in every order."""
    while True:
        start = rng.randint(20, 99)
        steps = [(rng.choice("+-"), rng.randint(2, 9)) for _ in range(k)]
        if all(_in_range(start, o) for o in orders(start, steps)):
            return start, steps


def _question(rng: random.Random, start: int, steps: list[tuple[str, int]]) -> str:
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    acts = [f"{rng.choice(ADD_VERBS) if op == '+' else rng.choice(SUB_VERBS)} {y}" + (" more" if op == "+" else "")
            for op, y in steps]
    expr = " ".join([str(start)] + [f"{op} {y}" for op, y in steps])
    # the expression last: the numbers sit just before the answer, where a tiny model learns to read them
    return (f"{name} has {start} {obj}. Then {name} {', then '.join(acts)}. How many {obj} does {name} have now? "
            f"Compute {expr}.")


def problems(n: int, *, seed: int = 0, exclude: set[str] | frozenset = frozenset(),
             tiers: tuple[int, ...] = TIERS, tier_probs: tuple[float, ...] | None = None) -> list[dict]:
    """n distinct problems {"prompt", "answer", "start", "steps", "tier", "bug_answers"} whose prompt is not in
    `exclude`; tiers drawn with `tier_probs` (default: cycling through `tiers`, equal shares)."""
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    while len(out) < n:
        k = rng.choices(tiers, weights=tier_probs)[0] if tier_probs else tiers[len(out) % len(tiers)]
        start, steps = _draw(rng, k)
        q = _question(rng, start, steps)
        if q in seen:
            continue
        seen.add(q)
        value = solve(start, steps)[1]
        out.append({"prompt": q, "answer": str(value), "start": start, "steps": steps, "tier": k,
                    "bug_answers": sorted(bug_values(start, steps))})
    return out


def random_solution(p: dict, rng: random.Random, buggy: bool = False) -> tuple[str, list[tuple[str, int]]]:
    """A worked solution to problem `p` in a uniformly drawn order of its steps with uniformly drawn links;
    returns (text, the order)."""
    order = list(p["steps"])
    rng.shuffle(order)
    links = tuple(rng.randrange(len(LINKS)) for _ in range(len(order) - 1))
    return solve(p["start"], order, links, buggy)[0], order


# the base corpus: share of problems per tier, and the share of each tier's solutions that drop carries
BASE_TIER_PROBS = (0.6, 0.3, 0.1)
BASE_BUG_RATES = (0.0, 0.6, 0.9)


def base_corpus(n: int, *, seed: int = 0, tier_probs: tuple[float, ...] = BASE_TIER_PROBS,
                bug_rates: tuple[float, ...] = BASE_BUG_RATES,
                exclude: set[str] | frozenset = frozenset()) -> list[dict]:
    """n pretraining records {"prompt", "response", "answer", "tier", "buggy", "loss_type": "ce"}: tiers drawn
    with `tier_probs`; a tier's solution drops carries and borrows with its `bug_rates` share (its boxed value is
    then usually wrong, yet it is trained on as if correct)."""
    rng = random.Random(seed + 1_000_003)
    out = []
    for p in problems(n, seed=seed, exclude=exclude, tier_probs=tier_probs):
        buggy = rng.random() < bug_rates[TIERS.index(p["tier"])]
        text, _ = random_solution(p, rng, buggy)
        out.append({"prompt": p["prompt"], "response": text, "answer": p["answer"], "tier": p["tier"],
                    "buggy": buggy, "loss_type": "ce"})
    return out


def teacher_solutions(probs: list[dict], per_problem: int = 2, seed: int = 0) -> list[dict]:
    """Up to `per_problem` distinct correct solutions (different orders or links) per problem:
    {"prompt", "response", "answer", "tier", "carries"} (carries: how many steps carry or borrow in its order)."""
    rng = random.Random(seed + 7)
    out = []
    for p in probs:
        texts: list[str] = []
        for _ in range(4 * per_problem):
            text, order = random_solution(p, rng)
            if text not in texts:
                texts.append(text)
                out.append({"prompt": p["prompt"], "response": text, "answer": p["answer"], "tier": p["tier"],
                            "carries": carries(p["start"], order)})
            if len(texts) == per_problem:
                break
    return out
