"""The demo's problem sets and token classes: what every stage, the base model's recipe and the report share."""

from __future__ import annotations

import re

import numpy as np

from exploresft_jax.data import word_problems as wp

# every problem set at full size, from fixed seeds (smaller runs take prefixes; tiers cycle 2, 3, 4 steps, so
# every prefix holds them in equal shares): name -> (count, seed)
PROBLEM_SETS = {"eval": (384, 101), "val": (96, 505), "teacher": (480, 202), "rl": (512, 303)}


def problem_sets(full_size: bool = True, s=None) -> dict[str, list[dict]]:
    """The demo's disjoint problem sets {"eval", "val", "teacher", "rl"} (prefixes of fixed full-size sets)."""
    out, seen = {}, set()
    for name, (n, seed) in PROBLEM_SETS.items():
        out[name] = wp.problems(n, seed=seed, exclude=seen)
        seen |= {p["prompt"] for p in out[name]}
    if not full_size and s is not None:
        sizes = {"eval": s.eval_problems, "val": s.val_problems, "teacher": s.teacher_problems,
                 "rl": s.rl_problems}
        out = {k: v[:sizes[k]] for k, v in out.items()}
    return out


# result: the digits after "=" (facts: one right value); choice: the operator and operand of a step (which step
# comes next: any order is right); link: the word joining two steps (any of wp.LINKS is right)
TOKEN_CLASSES = ("result", "choice", "link", "other")
_STEP = re.compile(r"(?:(" + "|".join(wp.LINKS) + r") )?\d+ ([+-] \d+) = (\d+)\.")


def token_classes(tok, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[R, T] int8 class per response token (index into TOKEN_CLASSES), -1 past each row's length.

    tokens: [R, T] generated (or response) token ids; lengths: [R] valid tokens per row. A token takes the class of
    the first marked span its text overlaps (spaces before a digit belong to it)."""
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    pieces = [(v or "").replace("\u0120", " ").replace("\u010a", "\n") for v in vocab]
    tokens = np.asarray(tokens)
    out = np.full(tokens.shape, -1, np.int8)
    for r in range(tokens.shape[0]):
        text, spans = "", []
        for t in tokens[r, :lengths[r]]:
            start = len(text)
            text += pieces[t] if t < len(pieces) else ""
            spans.append((start, len(text)))
        marks = np.full(len(text), TOKEN_CLASSES.index("other"), np.int8)
        for m in _STEP.finditer(text):
            for group, name in ((1, "link"), (2, "choice"), (3, "result")):
                if m.group(group):
                    marks[m.start(group):m.end(group)] = TOKEN_CLASSES.index(name)
        for j, (a, b) in enumerate(spans):
            core = [c for c in range(a, b) if not text[c].isspace()] or list(range(a, b))
            out[r, j] = marks[core[0]] if core else TOKEN_CLASSES.index("other")
    return out
