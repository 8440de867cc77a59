"""The demo's problem sets and token classes: what every stage, the base model's recipe and the report share."""

from __future__ import annotations

import re

import numpy as np

from exploresft_jax.data import word_problems as wp

# every problem set at full size, from fixed seeds (smaller runs take prefixes): name -> (count, seed)
PROBLEM_SETS = {"eval": (64, 101), "val": (64, 505), "teacher": (400, 202), "rl": (512, 303)}


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


TOKEN_CLASSES = ("digit", "operator", "word", "fork")


def token_classes(tok, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[R, T] int8 class per generated token: 0 digit, 1 operator (+ - = : ;), 2 word, 3 fork (the two tokens
    after a solution's first "a op b", where the direct, split and column styles part ways), -1 other / padding.
    """
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    pieces = [(v or "").replace("\u0120", " ").replace("\u010a", "\n") for v in vocab]
    base = np.full(len(pieces), -1, np.int8)
    for i, piece in enumerate(pieces):
        core = piece.strip()
        if core.isdigit():
            base[i] = 0
        elif core and all(ch in "+-=:;" for ch in core):
            base[i] = 1
        elif core.isalpha():
            base[i] = 2
    tokens = np.asarray(tokens)
    out = np.where(tokens < len(base), base[np.clip(tokens, 0, len(base) - 1)], -1).astype(np.int8)
    out[np.arange(tokens.shape[1])[None, :] >= np.asarray(lengths)[:, None]] = -1
    fork = re.compile(r"^\s*\d+ [+-] \d+")
    for r in range(tokens.shape[0]):
        text, ends = "", []
        for t in tokens[r, :lengths[r]]:
            text += pieces[t] if t < len(pieces) else ""
            ends.append(len(text))
        m = fork.match(text)
        if m:
            after = [j for j, e in enumerate(ends) if e > m.end()][:2]
            out[r, after] = 3
    return out


