"""Answer normalisation and equivalence, built on math-verify's LaTeX-to-sympy parser.

This module runs the comparison in the calling process with only a soft (signal) interruption; the hard,
process-based timeout lives in ``pool.py``, which calls :func:`judge` inside worker processes.

Comparison order (the first that decides wins):
1. normalised string equality;
2. both sides parse (each wrapped in ``\\boxed{}`` so bare LaTeX golds are not lost);
3. two numbers: exact equality when both are exact, a relative tolerance when a side is a decimal. This replaces
   math-verify's fixed-precision rounding, which calls ``1/2004!`` and ``1/2006!`` equal;
4. everything else (equations, tuples, sets, intervals, matrices, expressions) by math-verify's ``verify``;
   for expressions in free symbols, numeric spot checks at fixed points overrule a ``simplify`` that failed
   or a structural match that is wrong.
Percentages: ``10\\%`` equals both ``10`` and ``0.1``; degrees (``^\\circ``) are dropped on both sides.
"""

from __future__ import annotations

import functools
import logging
import math
import re

from .extract import extract_answer, last_boxed
from .verdict import CORRECT, NO_ANSWER, PARSE_ERROR, WRONG, Verdict, VerifierConfig

__all__ = ["judge", "compare_answers", "normalize_answer", "gold_answer"]

# math-verify logs a warning when its own signal timeout is disabled; ours replaces it.
logging.getLogger("math_verify").setLevel(logging.ERROR)
logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)

_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ\b|°|\\degree\b|\s*\\text\{\s*degrees?\s*\}|\s+degrees?\b")
_PERCENT_RE = re.compile(r"(?:\\%|%|\s*\\text\{\s*percent\s*\}|\s+percent)\s*$")
_SCI_RE = re.compile(r"(?<![A-Za-z\\\d.])(\d+(?:\.\d+)?|\.\d+)\s*[eE]\s*([+-]?\d+)(?![A-Za-z\d])")
_THOUSANDS_RE = re.compile(r"^([-+]?)(\d{1,3}(?:,\d{3})+)(\.\d+)?$")
_SPACE_THOUSANDS_RE = re.compile(r"^([-+]?)(\d{1,3}(?:(?:\\,|\\ |\s|\{,\})\d{3})+)(\.\d+)?$")
_STRING_NORM = [
    (re.compile(r"\\[dtc]frac"), r"\\frac"),
    (re.compile(r"\\m?left(?![a-z])|\\m?right(?![a-z])"), ""),
    (re.compile(r"\\[!,;: ]|\\q?quad"), ""),
    (re.compile(r"\s+"), ""),
]
_UNICODE = {"−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "÷": "\\div ", "π": "\\pi ", "∞": "\\infty ",
            "√": "\\sqrt ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne "}


def gold_answer(gold: object) -> str | None:
    """The gold answer as a string: numbers formatted exactly, lists joined, a boxed solution unboxed.

    ``27.0`` becomes ``27`` (an integer stored as a float must not switch comparison to a tolerance).
    """
    if gold is None or isinstance(gold, bool):
        return None
    if isinstance(gold, float):
        if not math.isfinite(gold):
            return None
        return str(int(gold)) if gold.is_integer() else repr(gold)
    if isinstance(gold, int):
        return str(gold)
    if isinstance(gold, (list, tuple)):
        parts = [p for p in (gold_answer(g) for g in gold) if p]
        return ", ".join(parts) if parts else None
    if not isinstance(gold, str):
        return None
    s = gold.strip()
    if "\\boxed" in s or "\\fbox" in s:
        boxed = last_boxed(s)
        if boxed is not None:
            s = boxed
    s = _strip_dollars(s)
    return s or None


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    if s.startswith("\\(") and s.endswith("\\)") or s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2].strip()
    return s


def normalize_answer(ans: str) -> tuple[str, bool]:
    """Rewrite an extracted answer into a form math-verify parses reliably.

    Returns ``(text, had_percent)``: degrees dropped, a trailing percent sign removed (and reported), unicode
    math symbols replaced by LaTeX, scientific notation ``4.5e33`` rewritten as ``4.5\\times10^{33}``, and
    thousands separators removed from a lone number (``1,234,567``, ``1\\,000``).
    """
    s = _strip_dollars(ans)
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = s.replace("\\$", "").strip()
    s = re.sub(r"\.\s*$", "", s) if re.search(r"[^\d]\.\s*$|^\d+\.\s*$", s) else s
    s = _DEGREE_RE.sub("", s).strip()
    had_percent = False
    m = _PERCENT_RE.search(s)
    if m is not None:
        had_percent = True
        s = s[:m.start()].strip()
    s = _SCI_RE.sub(r"\1\\times 10^{\2}", s)
    # "-1./3" (a decimal point with no digits after it) and code-style "np.arcsin(x)".
    s = re.sub(r"(\d)\.(?![\d.])", r"\1", s)
    s = re.sub(r"\b(?:np|numpy|math|sympy|sp)\.([A-Za-z]+)", r"\\\1", s)
    m = _THOUSANDS_RE.match(s) or _SPACE_THOUSANDS_RE.match(s)
    if m is not None:
        s = m.group(1) + re.sub(r"\D", "", m.group(2)) + (m.group(3) or "")
    return s.strip(), had_percent


def _string_key(s: str) -> str:
    for pat, rep in _STRING_NORM:
        s = pat.sub(rep, s)
    return s.strip(".").lower()


@functools.lru_cache(maxsize=4096)
def _parse(s: str):
    """The first sympy object math-verify parses from ``\\boxed{s}``, or None."""
    from math_verify import LatexExtractionConfig, parse

    out = parse("\\boxed{" + s + "}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                fallback_mode="no_fallback", parsing_timeout=None)
    for obj in out:
        if not isinstance(obj, str):
            return obj
    return None


def _is_number(obj) -> bool:
    import sympy

    return isinstance(obj, sympy.Expr) and not obj.free_symbols and bool(obj.is_number)


def _has_float(obj) -> bool:
    import sympy

    return bool(obj.atoms(sympy.Float))


def _numbers_equal(gold, pred, rel_tol: float) -> tuple[bool, str]:
    """Compare two numeric sympy expressions. Exact vs exact must be equal; a decimal allows ``rel_tol``.

    All arithmetic stays in sympy/mpmath floats at 50 digits: Python floats would underflow ``1/2004!`` to 0,
    and an absolute "chop" would call ``1/2004!`` and ``1/2006!`` equal.
    """
    import sympy

    gold = gold.doit() if hasattr(gold, "doit") else gold
    pred = pred.doit() if hasattr(pred, "doit") else pred
    g = sympy.N(gold, 50)
    p = sympy.N(pred, 50)
    if not (g.is_number and p.is_number) or g.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo) \
            or p.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        same = bool(gold == pred) or bool(sympy.simplify(gold - pred) == 0)
        return same, "equal (symbolic)" if same else "numbers differ"
    diff = sympy.Abs(sympy.N(g - p, 50))
    scale = sympy.Max(sympy.Abs(g), sympy.Abs(p))
    if not _has_float(gold) and not _has_float(pred):
        same = bool(diff == 0) or bool(diff <= sympy.Float("1e-40") * scale)
        if same and diff != 0:
            same = bool(sympy.simplify(gold - pred) == 0) or bool(diff <= sympy.Float("1e-45") * scale)
        return same, "equal exact numbers" if same else "numbers differ"
    tol = sympy.Float(rel_tol)
    if _has_float(gold):
        same = bool(diff <= tol * scale)
        return same, "numbers within relative tolerance" if same else "numbers differ"
    # Exact gold, decimal prediction: the decimal must be right to 6 places and relatively close.
    same = bool(diff <= sympy.Float("1e-6") * sympy.Max(1, sympy.Abs(g))) and bool(diff <= tol * scale)
    return same, "decimal matches exact number" if same else "decimal differs from exact number"


_SPOT_VALUES = (-1.37, 0.61, 2.29, -0.43, 3.17, 1.71, -2.53)


def _spot_check(gold, pred) -> str | None:
    """Evaluate both expressions at fixed points. Returns "agree", "disagree" or None (not decidable)."""
    import sympy

    symbols = sorted(gold.free_symbols | pred.free_symbols, key=lambda s: s.name)
    if not symbols or len(symbols) > 6:
        return None
    valid = 0
    for i in range(5):
        subs = {s: sympy.Float(_SPOT_VALUES[(i + 3 * j) % len(_SPOT_VALUES)]) for j, s in enumerate(symbols)}
        try:
            g = complex(sympy.N(gold.subs(subs), 30))
            p = complex(sympy.N(pred.subs(subs), 30))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            continue
        if not all(math.isfinite(v) for v in (g.real, g.imag, p.real, p.imag)):
            continue
        valid += 1
        if abs(g - p) > 1e-8 * max(1.0, abs(g), abs(p)):
            return "disagree"
    return "agree" if valid >= 3 else None


def _compare_parsed(gold, pred, cfg: VerifierConfig) -> tuple[bool, str]:
    import sympy
    from math_verify import verify as mv_verify

    if _is_number(gold) and _is_number(pred):
        return _numbers_equal(gold, pred, cfg.float_rel_tol)
    same = bool(mv_verify([gold], [pred], timeout_seconds=None, float_rounding=6))
    if (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)
            and (gold.free_symbols or pred.free_symbols)):
        spot = _spot_check(gold, pred)
        if same and spot == "disagree":
            return False, "symbolic match contradicted by numeric spot checks"
        if not same and spot == "agree":
            return True, "numeric spot checks agree"
    return same, "sympy equivalent" if same else "not equivalent"


def compare_answers(gold: str, pred: str, cfg: VerifierConfig = VerifierConfig()) -> tuple[str, str]:
    """Decide whether two already-extracted answers are equivalent.

    Returns ``(status, reason)`` with status ``correct``, ``wrong`` or ``parse_error``.
    """
    g_text, g_pct = normalize_answer(gold)
    p_text, p_pct = normalize_answer(pred)
    if not p_text:
        return NO_ANSWER, "empty answer"
    if cfg.string_match and g_pct == p_pct and _string_key(g_text) == _string_key(p_text):
        return CORRECT, "same normalised string"
    g_obj = _parse(g_text)
    if g_obj is None:
        return PARSE_ERROR, "gold answer could not be parsed"
    p_obj = _parse(p_text)
    if p_obj is None:
        return PARSE_ERROR, "prediction could not be parsed"
    candidates = [(g_obj, p_obj)]
    if g_pct != p_pct:
        # "10\%" against "10" or "0.1": accept either reading of the side that carried the percent sign.
        if g_pct:
            g2 = _parse(g_text + "\\%")
            if g2 is not None:
                candidates.append((g2, p_obj))
        else:
            p2 = _parse(p_text + "\\%")
            if p2 is not None:
                candidates.append((g_obj, p2))
    reason = "not equivalent"
    for g, p in candidates:
        same, reason = _compare_parsed(g, p, cfg)
        if same:
            return CORRECT, reason
    return WRONG, reason


def judge(gold: object, prediction: object, cfg: VerifierConfig = VerifierConfig()) -> Verdict:
    """Extract the answer from ``prediction`` and compare it with ``gold``, in this process.

    Never raises on string inputs: any parser or sympy error becomes a ``parse_error`` verdict. It has no hard
    timeout of its own; use ``pool.check``/``check_batch`` (or the package-level ``check``) for that.
    """
    try:
        g = gold_answer(gold)
    except Exception as e:  # noqa: BLE001 - a verdict, never an exception
        return Verdict(PARSE_ERROR, f"bad gold answer ({type(e).__name__})")
    if not g:
        return Verdict(PARSE_ERROR, "empty gold answer")
    if len(g) > cfg.max_answer_chars:
        return Verdict(PARSE_ERROR, "gold answer too long", gold=g[:200])
    try:
        ans, rule = extract_answer(prediction, require_think_close=cfg.require_think_close,
                                   last_number_fallback=cfg.last_number_fallback, take_whole=cfg.take_whole,
                                   max_len=cfg.max_answer_chars)
    except Exception as e:  # noqa: BLE001
        return Verdict(PARSE_ERROR, f"extraction failed ({type(e).__name__})", gold=g)
    if ans is None:
        return Verdict(NO_ANSWER, rule, gold=g)
    if len(ans) > cfg.max_answer_chars:
        return Verdict(PARSE_ERROR, "answer too long", answer=ans[:200], gold=g)
    try:
        status, reason = compare_answers(g, ans, cfg)
    except RecursionError:
        return Verdict(PARSE_ERROR, "expression too deeply nested", answer=ans, gold=g)
    except Exception as e:  # noqa: BLE001
        return Verdict(PARSE_ERROR, f"comparison failed ({type(e).__name__})", answer=ans, gold=g)
    return Verdict(status, f"{reason} [{rule}]", answer=ans, gold=g)
