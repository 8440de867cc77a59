"""Answer normalisation and equivalence, built on math-verify's LaTeX-to-sympy parser.

This module runs the comparison in the calling process with only a soft (signal) interruption; the hard,
process-based timeout lives in ``pool.py``, which calls :func:`judge` inside worker processes.

Comparison order (the first that decides wins):
1. normalised string equality (``string_match``; case-sensitive: ``x`` is not ``X``);
   then the guards of ``guards.py``: answers no parser should see (power towers, brackets nested over 25 deep,
   factorials of huge numbers, control characters, unbalanced braces, ...) are a ``parse_error`` naming the guard;
2. rules that must not depend on the parser: clock times (``11:00`` is not ``1:00``, which both parse to a
   division by zero), primes (``E'`` is not ``E``: the parser drops primes), text answers (``\\text{odd}`` =
   ``Odd``, case-insensitive for words; ``\\mathcal{B}`` = ``B`` and ``\\text{e}`` = ``e`` as letters);
3. answer forms read without the parser (``forms.py``): matrices entry by entry (also inside an extra pair of
   brackets; a wide numeric matrix never reaches the grammar), a row or column vector against a tuple;
   alternatives joined by words (``f(x)=x \\text{ or } f(x)=-x``) as the same parts in any order; relation chains
   ``label = value \\approx value``, where a left side that names the quantity (``V_1:V_2``, ``S_{\\triangle ABC}``,
   ``f(x)``, ``x``) is dropped against a bare value but a left side that is part of the answer (``x+y=5``) is not,
   and one-letter function definitions compare up to the name of their variable (``f(t)=2t`` = ``f(x)=2x``);
4. a parser-free exact path (``fastparse.py``) for integers, decimals, fractions, radicals, powers, pi and
   short polynomials: two numbers compare exactly (Rational) or with the decimal rules below, and identical
   trees, lists, tuples/intervals and relations are equal. Most answers never reach the LaTeX grammar;
5. both sides parsed by math-verify, after the parser-cost screen of ``guards.py`` (each wrapped in ``\\boxed{}``
   so bare LaTeX golds are not lost, and only
   the whole box accepted: never a fraction or math span found inside an answer that fails to parse); two
   numbers: exact equality when both are exact, a relative tolerance when a side is a decimal (replacing
   math-verify's fixed-precision rounding, which calls ``1/2004!`` and ``1/2006!`` equal); identical parses are
   equal; everything else (equations, tuples, sets, intervals, matrices and matrix expressions) by
   math-verify's ``verify``, after numeric spot checks at fixed points for expressions in free symbols (they
   decide whenever they can: a disagreement refutes, agreement at every point accepts); a number is never a tuple,
   interval or set; the symbolic stage runs under ``VerifierConfig.symbolic_budget``;
6. a match is refused when the parser dropped a variable on one side only (``2`` against ``2y``) or only
   letter case tells the two apart.
Number formats: thousands separators (``3,141,592``, ``12,\\!345``, ``{,}``, thin spaces), currency (``\\$``, ``€``,
``£``) and unit words (``m²``, ``\\text{ cm}``) around a number, trailing backslashes; a prediction written with
a decimal comma (``3,75``) is also read as 3.75 against a single-number gold (a gold ``1,2`` is a list unless the part
after the comma starts with 0; ``3,125`` is 3.125 only against a gold written ``3.125``); Indian digit groups
(``12,\\!34,\\!567``, ``1,00,000``) and Chinese numerals (``四分之三``) are read as numbers; a gold solution with
boxes separated by prose has its final box as the answer. Two written decimals must agree
to one unit in the last place of the coarser. Relations: ``>=``/``\\geq``/``\\geqslant`` -> ``\\ge``, ``!=`` ->
``\\ne``, ``\\lt`` -> ``<``. Percentages: ``10\\%`` (also ``10 %``, ``10 percent``) equals both ``10`` and
``0.1``; degrees (``^\\circ``) are dropped on both sides.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import signal
import threading
import time

from .extract import box_spans, extract_answer
from .fastparse import fast_parse, fast_structure, same_structure
from .forms import (
    cjk_numerals,
    function_definition,
    has_word_separator,
    is_label,
    matrix_rows,
    relation_chain,
    rename_letter,
    split_alternatives,
    strip_cjk_suffix,
    ungroup_digits,
)
from .guards import screen, screen_for_parser
from .verdict import CORRECT, NO_ANSWER, PARSE_ERROR, WRONG, Verdict, VerifierConfig

__all__ = ["judge", "compare_answers", "normalize_answer", "gold_answer"]

# math-verify logs a warning when its own signal timeout is disabled; ours replaces it.
logging.getLogger("math_verify").setLevel(logging.ERROR)
logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)

_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ\b|°|\\degree\b|\s*\\text\{\s*degrees?\s*\}|\s+degrees?\b")
_PERCENT_RE = re.compile(r"(?:\\%|%|\s*\\text\{\s*(?:percent|per\s*cent|pct)\s*\}"
                         r"|\s*(?:percent|per\s*cent|pct)\.?)\s*$")
_SCI_RE = re.compile(r"(?<![A-Za-z\\\d.])(\d+(?:\.\d+)?|\.\d+)\s*[eE]\s*([+-]?\d+)(?![A-Za-z\d])")
# Digit groups never start with a zero ("0,125" and "0\\,125" are decimals written with a comma or a space).
_THOUSANDS_RE = re.compile(r"^([-+]?)((?!0)\d{1,3}(?:,\d{3})+)(\.\d+)?$")
_SPACE_THOUSANDS_RE = re.compile(r"^([-+]?)((?!0)\d{1,3}(?:(?:\\,|\\ |\s|\{,\})\d{3})+)(\.\d+)?$")
_STRING_NORM = [
    (re.compile(r"\\[dtc]frac"), r"\\frac"),
    (re.compile(r"\\m?left(?![a-z])|\\m?right(?![a-z])"), ""),
    (re.compile(r"\\[!,;: ]|\\q?quad"), ""),
    (re.compile(r"\s+"), ""),
]
_UNICODE = {"−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "÷": "\\div ", "π": "\\pi ", "∞": "\\infty ",
            "√": "\\sqrt ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "≈": "\\approx ", "，": ", ", "；": "; ",
            "：": ":", "（": "(", "）": ")", "＝": "=", "＋": "+", "－": "-", "／": "/", "＜": "<", "＞": ">"}
_CJK_ANY_RE = re.compile(r"[\u2e80-\u9fff\u3040-\u30ff\uac00-\ud7af]")


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
        # Every box of a gold solution is a part of the answer ("\\boxed{2} and \\boxed{3}", "$a=\\boxed{2}$,
        # $b=\\boxed{3}$"), unless prose separates them: then the final box is the answer and the earlier ones
        # are intermediate results ("\\boxed{3} for the first step; the requested value is \\boxed{5}").
        spans = box_spans(s)
        first = 0
        for i in range(1, len(spans)):
            if _is_prose(s[spans[i - 1][1]:spans[i][0]]):
                first = i
        boxes = list(dict.fromkeys(c for _, _, c in spans[first:] if c))
        if boxes:
            s = ", ".join(boxes)
    s = _strip_dollars(s)
    return s or None


_PROSE_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_JOIN_WORDS = {"and", "or", "then", "also", "with", "so", "thus", "hence", "where", "while", "respectively"}
_CJK_RE = re.compile(r"[\u4e00-\u9fff]")


def _is_prose(gap: str) -> bool:
    """Whether the text between two boxes is a sentence (two words or more besides joiners such as "and",
    "then", "so", or CJK text), not a joiner."""
    if len(_CJK_RE.findall(gap)) >= 3:
        return True
    words = [w for w in _PROSE_WORD_RE.findall(gap) if w.lower() not in _JOIN_WORDS and w not in ("text", "quad")]
    return len(words) >= 2


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    if s.startswith("\\(") and s.endswith("\\)") or s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2].strip()
    return s


_SPACES = {"\u2009": " ", "\u202f": " ", "\u00a0": " ", "\u2007": " ", "\u2002": " ", "\u2003": " "}
_RELATIONS = [
    (re.compile(r"\\geqslant|\\geq(?![a-z])|>="), r"\\ge "), (re.compile(r"\\leqslant|\\leq(?![a-z])|<="), r"\\le "),
    (re.compile(r"\\neq(?![a-z])|!=|=/="), r"\\ne "), (re.compile(r"\\lt(?![a-z])"), "<"),
    (re.compile(r"\\gt(?![a-z])"), ">"),
]
_CURRENCY_RE = re.compile(r"\\text\{\s*(?:€|£|¥|₹|\\euro|USD|EUR)\s*\}|€|£|¥|₹|\\euro\b|\\texteuro\b|\\pounds\b|\\yen\b"
                          r"|(?<=\d)\s*(?:USD|EUR|euros?|dollars?)\s*$|^\s*(?:USD|EUR)\s*(?=\d)")
_UNIT_WORDS = (r"(?:square\s+|sq\.?\s*|cubic\s+)?(?:km|cm|mm|m|kg|mg|ml|mL|L|ft|feet|foot|inch(?:es)?|in|yd|yards?|"
               r"miles?|mph|kph|km/h|m/s|cm/s|sec|secs|seconds?|min|mins|minutes?|hr|hrs|hours?|days?|weeks?|"
               r"months?|years?|meters?|metres?|centimeters?|centimetres?|kilometers?|kilometres?|millimeters?|"
               r"grams?|kilograms?|liters?|litres?|units?|cents?|dollars?|euros?|pounds?|degrees?|"
               r"people|persons?|students?|ways|points?|marbles?|apples?|books?|cookies?|pages?|tiles?)")
_UNIT_SUFFIX_RE = re.compile(r"^([-+]?(?:\d[\d,. ]*|\.\d+)|[-+]?\\frac\{\d+\}\{\d+\})\s*" + _UNIT_WORDS
                             + r"(?:²|³|\^\s*\{?\s*[23]\s*\}?)?\.?$")
_TEXT_UNIT_RE = re.compile(r"(?<=[\d}])(?:\s|\\[,;: !])*\\(?:text|mbox|mathrm|textrm)\s*\{\s*" + _UNIT_WORDS
                           + r"\s*\}(?:\s*\^\s*\{?\s*[23]\s*\}?|²|³)?")
# A number followed by one word of any language (a unit or the counted thing: "4,2 metros", "15 manzanas",
# "3 Äpfel"), except words that are mathematics.
_WORD_SUFFIX_RE = re.compile(r"^([-+]?(?:\d[\d,. ]*|\.\d+)|[-+]?\\frac\{\d+\}\{\d+\})\s+([^\W\d_]{2,})\.?$")
_MATH_WORDS = {"pi", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "mod", "and", "or", "choose",
               "over", "times", "cdot", "deg", "rad", "radians", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
               "infty", "mn", "ab", "xy"}
_TRAILING_BACKSLASH_RE = re.compile(r"(?:\\\\|\\)+\s*$")


def normalize_answer(ans: str) -> tuple[str, bool]:
    """Rewrite an extracted answer into a form math-verify parses reliably.

    Returns ``(text, had_percent)``: degrees dropped, a trailing percent sign removed (and reported), unicode
    math symbols replaced by LaTeX, scientific notation ``4.5e33`` rewritten as ``4.5\\times10^{33}``, and
    thousands separators removed from a lone number (``1,234,567``, ``1\\,000``).
    """
    s = _strip_dollars(ans)
    for table in (_UNICODE, _SPACES):
        for k, v in table.items():
            if k in s:
                s = s.replace(k, v)
    if _CJK_ANY_RE.search(s):
        s = strip_cjk_suffix(cjk_numerals(s).strip().rstrip("。"))
    s = s.replace("\\$", "")
    # Digit groups, Western or Indian (12,\!34,\!567 = 1234567), before "{,}" and ",\!" lose their meaning.
    s = ungroup_digits(s.strip())
    s = s.replace("{,}", ",")
    s = re.sub(r"(?<=\d),\\!\s*(?=\d)", ",", s)
    s = _TRAILING_BACKSLASH_RE.sub("", s)
    s = _CURRENCY_RE.sub("", s).strip()
    s = s.strip("$").strip()
    for pat, rep in _RELATIONS:
        s = pat.sub(rep, s)
    s = _TEXT_UNIT_RE.sub("", s).strip()
    m = _UNIT_SUFFIX_RE.match(s) or _WORD_SUFFIX_RE.match(s)
    if m is not None and (m.lastindex == 1 or m.group(2).lower() not in _MATH_WORDS):
        s = m.group(1).strip()
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
    else:
        s = ungroup_digits(s)
    return s.strip(), had_percent


def _string_key(s: str) -> str:
    for pat, rep in _STRING_NORM:
        s = pat.sub(rep, s)
    # Case matters: x and X are different variables (text answers compare case-insensitively by their own rule).
    return s.strip(".")


@functools.lru_cache(maxsize=4096)
def _parse(s: str):
    """The sympy object math-verify parses from the whole of ``\\boxed{s}``, or None.

    Only the box is parsed (``extraction_mode="first_match"``). With math-verify's default (``any_match``), a
    box that fails to parse (a syntax error, or Python's recursion limit in the grammar near 110 nested
    ``\\frac``) falls through to its anchorless patterns, which take any bare ``\\frac{1}{2}`` or ``$...$``
    inside the text: ``\\frac{\\frac{...\\frac{1}{2}...}{2}}{2}`` 150 deep parsed as ``1/2``.
    """
    from math_verify import LatexExtractionConfig, parse

    out = parse("\\boxed{" + s + "}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                fallback_mode="no_fallback", extraction_mode="first_match", parsing_timeout=None)
    for obj in out:
        if not isinstance(obj, str):
            return obj
    return None


def _is_number(obj) -> bool:
    import sympy

    return isinstance(obj, sympy.Expr) and not obj.free_symbols and bool(obj.is_number)


def _is_collection(obj) -> bool:
    import sympy

    if isinstance(obj, (sympy.Interval, sympy.Union)):
        return True
    if isinstance(obj, (sympy.Tuple, sympy.FiniteSet, tuple, list)):
        return len(obj) >= 2
    return False


def _has_float(obj) -> bool:
    import sympy

    return bool(obj.atoms(sympy.Float))


def _numbers_equal(gold, pred, rel_tol: float) -> tuple[bool, str]:
    """Compare two numeric sympy expressions. Exact vs exact must be equal; a decimal allows ``rel_tol``.

    All arithmetic stays in sympy/mpmath floats at 50 digits: Python floats would underflow ``1/2004!`` to 0,
    and an absolute "chop" would call ``1/2004!`` and ``1/2006!`` equal.
    """
    import sympy

    if gold.has(*_calculus_types()) or pred.has(*_calculus_types()):
        # An unevaluated integral, sum, product or limit: a numeric estimate refutes cheaply; only values that
        # agree numerically are worth the symbolic evaluation (doit), which may take seconds.
        g0 = p0 = None
        armed = False
        try:
            with symbolic_budget(_QUICK) as armed:
                g0, p0 = complex(sympy.N(gold, 20)), complex(sympy.N(pred, 20))
        except (TypeError, ValueError, ArithmeticError):
            g0 = p0 = None
        except BudgetExceeded:
            if not armed:
                raise  # an enclosing budget ran out, not this one
            g0 = p0 = None
        if g0 is not None and all(math.isfinite(v) for v in (g0.real, g0.imag, p0.real, p0.imag)) \
                and abs(g0 - p0) > 1e-6 * max(1.0, abs(g0), abs(p0)) + rel_tol * max(abs(g0), abs(p0)):
            return False, "numbers differ (numeric estimate)"
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


_QUICK = VerifierConfig(symbolic_budget=0.25, timeout=1.0)


@functools.lru_cache(maxsize=1)
def _calculus_types() -> tuple:
    import sympy

    return (sympy.Integral, sympy.Sum, sympy.Product, sympy.Limit, sympy.Derivative)


_SPOT_VALUES = (-1.37, 0.61, 2.29, -0.43, 3.17, 1.71, -2.53)


def _mp_complex(v):
    """An mpmath complex for a numeric sympy value, or None when it is not a finite number."""
    import mpmath
    import sympy

    re_, im_ = v.as_real_imag()
    if not (re_.is_Number and im_.is_Number):
        return None
    z = mpmath.mpc(mpmath.mpf(sympy.Float(re_, 30)._mpf_), mpmath.mpf(sympy.Float(im_, 30)._mpf_))
    return z if mpmath.isfinite(z) else None


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
            # mpmath numbers, not Python complex: values such as 3.29^2000 overflow a float but compare fine.
            g = _mp_complex(sympy.N(gold.subs(subs), 30))
            p = _mp_complex(sympy.N(pred.subs(subs), 30))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError):
            continue
        if g is None or p is None:
            continue
        valid += 1
        if abs(g - p) > 1e-8 * max(1, abs(g), abs(p)):
            return "disagree"
    return "agree" if valid >= 3 else None


def _compare_parsed(gold, pred, cfg: VerifierConfig) -> tuple[bool, str]:
    import sympy
    from math_verify import verify as mv_verify

    if _is_number(gold) and _is_number(pred):
        return _numbers_equal(gold, pred, cfg.float_rel_tol)
    if _is_number(gold) and _is_collection(pred) or _is_collection(gold) and _is_number(pred):
        # A number is never a tuple, an interval or a set of two or more elements; math-verify would still try
        # to simplify their difference (seconds on a nested radical).
        return False, "a number against a tuple, interval or set"
    try:
        # Identical trees are equal; this skips simplify and the spot checks (most of the cost).
        if gold == pred:
            return True, "identical parses"
    except Exception:  # noqa: BLE001 - some sympy objects refuse comparison; decide below
        pass
    if (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)
            and (gold.free_symbols or pred.free_symbols)):
        # The spot checks decide whenever they can: a disagreement refutes any symbolic match, and an agreement
        # at every point accepts. Running them first skips simplify (seconds on (x+y+z)^{60} or \sin^{300} x).
        spot = _spot_check(gold, pred)
        if spot == "disagree":
            return False, "not equivalent (numeric spot checks disagree)"
        if spot == "agree":
            return True, "numeric spot checks agree"
    same = bool(mv_verify([gold], [pred], timeout_seconds=None, float_rounding=6))
    return same, "sympy equivalent" if same else "not equivalent"


class BudgetExceeded(BaseException):
    """The symbolic comparison of one item used up its share of the timeout. A BaseException, so that library code
    which catches Exception (math-verify's verify does) cannot turn it into a verdict."""


# Timer interrupts raised in this process. An interrupt inside a parse can leave the LaTeX grammar's lazily built
# state broken, so that every later parse in the process fails: a verifier worker that saw one is replaced.
INTERRUPTS = [0]


def _raise_budget(signum, frame):
    INTERRUPTS[0] += 1
    raise BudgetExceeded()


@contextlib.contextmanager
def symbolic_budget(cfg: VerifierConfig):
    """Interrupt the block (``BudgetExceeded``) after ``cfg.symbolic_budget`` seconds, capped at half the timeout.

    Works in the main thread of a process with interval timers (every verifier worker). An outer timer (the
    worker's soft timeout) is saved and re-armed with what is left of it; when it would fire first, the budget
    is not armed. Elsewhere the block runs without a budget.
    """
    budget = min(cfg.symbolic_budget, 0.5 * cfg.timeout)
    if (budget <= 0 or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield False
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left <= budget:
        yield False
        return
    start = time.monotonic()
    old = signal.signal(signal.SIGALRM, _raise_budget)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, outer_left - (time.monotonic() - start)))


# -- rules decided before any parsing ---------------------------------------------------------------------
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?\s*(?:\\text\{\s*)?(?:([ap])\.?\s*m\.?)?\s*\}?$", re.I)
_PRIME_RE = re.compile(r"'|\\prime\b")
_WORD_WRAP_RE = re.compile(r"\\(?:text|textbf|textit|textrm|textsf|mathrm|mathbf|mathit|mathsf|mbox|"
                           r"operatorname|mathcal|mathscr|mathfrak|boldsymbol)\s*\{([^{}]*)\}")
_WORD_RE = re.compile(r"^[A-Za-z](?:[A-Za-z \-]*[A-Za-z])?$")
_LETTER_RE = re.compile(r"(?<![A-Za-z\\])[A-Za-z](?![A-Za-z])")
# A decimal comma: one or two digits after it, four or more (three are a thousands group), or any number of digits
# after a zero ("0,125" is never 125).
_DECIMAL_COMMA_RE = re.compile(r"^([-+]?\d+),(\d{1,2}|\d{4,})$|^([-+]?0),(\d+)$")


def _time_of_day(s: str):
    m = _TIME_RE.match(s)
    if m is None:
        return None
    h, mi, sec, half = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), (m.group(4) or "").lower()
    if mi > 59 or sec > 59 or h > 24:
        return None
    if half:
        if not 1 <= h <= 12:
            return None
        h = h % 12 + (12 if half == "p" else 0)
    return h, mi, sec


def _word(s: str) -> tuple[str, bool] | None:
    """``(key, wrapped)`` for a text answer (``\\text{odd}``, ``Even``, ``\\mathcal{B}``, ``(C)``), else None."""
    t = s.strip()
    wrapped = False
    for _ in range(3):
        new = _WORD_WRAP_RE.sub(lambda m: m.group(1), t).strip()
        if new == t:
            break
        wrapped, t = True, new
    t = t.strip()
    if len(t) >= 3 and t[0] == "(" and t[-1] == ")":
        t = t[1:-1].strip()
    if not _WORD_RE.match(t):
        return None
    return re.sub(r"\s+", " ", t), wrapped


def _pre_parse_rules(g: str, p: str) -> tuple[str, str] | None:
    """Verdicts that must not depend on the parser: clock times, primes, text answers."""
    tg, tp = _time_of_day(g), _time_of_day(p)
    if tg is not None or tp is not None:
        # "11:00" and "1:00" both parse to 11/0 and 1/0 (complex infinity); compare clock readings instead.
        if tg is not None and tp is not None:
            return (CORRECT, "same time of day") if tg == tp else (WRONG, "different times of day")
        return WRONG, "a time of day against a non-time"
    if len(_PRIME_RE.findall(g)) != len(_PRIME_RE.findall(p)):
        return WRONG, "primes differ"  # the parser drops primes: E' would equal E
    wg, wp = _word(g), _word(p)
    if wg is not None and wp is not None:
        (kg, g_wrapped), (kp, p_wrapped) = wg, wp
        if len(kg) > 1 or len(kp) > 1:
            same = kg.lower() == kp.lower()
            return (CORRECT, "same text answer") if same else (WRONG, "different text answers")
        if g_wrapped or p_wrapped:
            # "\text{e}" and "\mathcal{B}" are letters, not Euler's number or a symbol named "mathcal{B}".
            return (CORRECT, "same letter") if kg == kp else (WRONG, "different letters")
    return None


# -- fast, parser-free numeric comparison -----------------------------------------------------------------
_HAS_RELATION_RE = re.compile(r"[=<>]|\\[lgn]e(?![a-z])")
_PLAIN_DECIMAL_RE = re.compile(r"^[-+]?\d*\.(\d+)$")
_LEADING_ZERO_COMMA_RE = re.compile(r"^[-+]?\d+,0\d*$")
_COMMA3_RE = re.compile(r"^([-+]?\d{1,3}),(\d{3})$")


def _value_readings(text: str, pct: bool, comma_decimal: bool) -> list:
    """Numeric readings ``(value, decimals)`` of an answer: itself, /100 when it carried a percent sign, and
    "3,75" as 3.75 when ``comma_decimal``. ``decimals`` is the number of written decimal places of a plain
    decimal, else None."""
    out = []
    v = fast_parse(text)
    if v is not None:
        m = _PLAIN_DECIMAL_RE.match(text)
        out.append((v, len(m.group(1)) if m else None))
    elif comma_decimal:
        m = _DECIMAL_COMMA_RE.match(text)
        if m is not None:
            whole, frac = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
            v = fast_parse(f"{whole}.{frac}")
            if v is not None:
                out.append((v, len(frac)))
    if pct:
        out.extend([(x / 100, None) for x, _ in out])
    return out


def _fast_numbers_equal(g, p, rel_tol: float) -> tuple[bool, str]:
    import sympy

    if isinstance(g, sympy.Rational) and isinstance(p, sympy.Rational):
        same = g == p
        return same, "equal exact numbers" if same else "numbers differ"
    return _numbers_equal(g, p, rel_tol)


def _fast_path(g_text, g_pct, p_text, p_pct, cfg) -> tuple[str, str] | None:
    g = fast_parse(g_text)
    p = fast_parse(p_text)
    g_num = g is not None and _is_number(g)
    p_num = p is not None and _is_number(p)
    if g_num or p_num:
        # Decimal commas (European style): a prediction "3,75" against a single-number gold. A gold "1,2" is a list,
        # unless the part after the comma starts with 0 ("1,05", "0,05": no list element is written so).
        gs = _value_readings(g_text, g_pct, p_num and _LEADING_ZERO_COMMA_RE.match(g_text) is not None)
        ps = _value_readings(p_text, p_pct, g_num)
        if gs and ps and all(_is_number(x) for x, _ in gs + ps):
            reason = "numbers differ"
            for a, da in gs:
                for b, db in ps:
                    same, reason = _fast_numbers_equal(a, b, cfg.float_rel_tol)
                    if same and da is not None and db is not None:
                        # Two written decimals: the tolerance may not exceed one unit in the last place of the
                        # coarser one (7250.5 is not 7250.05, although they are within 1e-4).
                        import sympy

                        ulp = sympy.Integer(10) ** -min(da, db)
                        if abs(sympy.Rational(str(a)) - sympy.Rational(str(b))) > ulp:
                            same, reason = False, "decimals differ in a written digit"
                    if same:
                        return CORRECT, reason
            return WRONG, reason
        return None
    if g is not None and p is not None and g_pct == p_pct and g == p:
        return CORRECT, "identical expressions"
    if g_pct == p_pct and ("," in g_text or _HAS_RELATION_RE.search(g_text)):
        sg = fast_structure(g_text)
        if sg is not None and same_structure(sg, fast_structure(p_text)):
            return CORRECT, "identical structure"
    return None


def _parse_names(obj) -> set[str]:
    """Lower-cased letters of the symbol and function names in a parse."""
    import sympy
    from sympy.core.function import AppliedUndef

    names = [str(x) for x in getattr(obj, "free_symbols", ())]
    if isinstance(obj, sympy.Basic):
        names += [type(f).__name__ for f in obj.atoms(AppliedUndef)]
    return {c.lower() for n in names for c in n if c.isalpha()}


def _letters(text: str) -> set[str]:
    """Single-letter variables written in ``text`` (case kept; commands and text removed)."""
    bare = _WORD_WRAP_RE.sub(" ", text)
    bare = re.sub(r"\\begin\{[a-z]*\}(?:\{[a-z|]*\})?|\\end\{[a-z]*\}|\\[A-Za-z]+", " ", bare)
    return set(_LETTER_RE.findall(bare)) - {"e", "i"}


def _dropped_letters(text: str, obj) -> set[str]:
    """Single-letter variables written in ``text`` that its parse lost (``e`` and ``i`` are constants)."""
    letters = {c.lower() for c in _letters(text)}
    return letters - _parse_names(obj) if letters else set()


# -- answer forms read before parsing (forms.py) -------------------------------------------------------------
_MAX_FORM_DEPTH = 2          # forms inside forms (an alternative that is a labelled value)
_MAX_MATRIX_PARSED = 24      # matrix entries that may go to the LaTeX parser in one comparison
_MAX_VALUES = 4              # values of one relation chain tried


def _tuple_items(s: str) -> list[str]:
    """The elements of ``(a, b, c)`` / ``[a, b]`` / ``\\left(...\\right)``, or ``[s]`` for anything else."""
    t = s.strip()
    for left, right in (("\\left(", "\\right)"), ("\\left[", "\\right]"), ("(", ")"), ("[", "]")):
        if t.startswith(left) and t.endswith(right):
            parts = split_alternatives(t[len(left):len(t) - len(right)], max_parts=1024)
            if parts is not None:
                return parts
    return [t]


def _compare_entries(pairs, cfg, depth) -> tuple[str, str]:
    """All pairs equal: cheap decisions first (any cheap difference decides), then the parser for the rest."""
    hard = []
    for a, b in pairs:
        a_n, a_pct = normalize_answer(a)
        b_n, b_pct = normalize_answer(b)
        if a_pct == b_pct and _string_key(a_n) == _string_key(b_n):
            continue
        decided = _fast_path(a_n, a_pct, b_n, b_pct, cfg)
        if decided is None:
            hard.append((a, b))
        elif decided[0] != CORRECT:
            return WRONG, f"entries differ ({a} vs {b})"
    if len(hard) > _MAX_MATRIX_PARSED:
        return PARSE_ERROR, (f"matrix_size guard: {len(hard)} entries need the parser "
                             f"(limit {_MAX_MATRIX_PARSED})")
    for a, b in hard:
        status, reason = _compare(a, b, cfg, depth + 1)
        if status != CORRECT:
            return (WRONG if status == WRONG else status), f"entries differ ({reason})"
    return CORRECT, "equal entry by entry"


def _matrix_rule(g: str, p: str, cfg, depth) -> tuple[str, str] | None:
    if "\\begin" not in g and "\\begin" not in p:
        return None
    mg, mp = matrix_rows(g), matrix_rows(p)
    if mg is None and mp is None:
        return None
    if mg is not None and mp is not None:
        if (len(mg), len(mg[0])) != (len(mp), len(mp[0])):
            return WRONG, f"matrix shapes differ ({len(mg)}x{len(mg[0])} vs {len(mp)}x{len(mp[0])})"
        status, reason = _compare_entries([(a, b) for ra, rb in zip(mg, mp) for a, b in zip(ra, rb)], cfg, depth)
        return status, f"matrices: {reason}"
    table, other = (mg, p) if mg is not None else (mp, g)
    if "\\begin" in other or len(table) * len(table[0]) < 2:
        return None  # a matrix expression, or a 1x1 matrix: the parser decides
    if len(table) > 1 and len(table[0]) > 1:
        return WRONG, "a matrix against an answer that is not one"
    # A row or column vector against a tuple: the same entries in the same order.
    items = _tuple_items(other)
    entries = [e for row in table for e in row]
    if len(items) != len(entries):
        return WRONG, f"a vector of {len(entries)} entries against {len(items)} values"
    if len(items) == 1:
        return None
    status, reason = _compare_entries(list(zip(entries, items)) if mg is not None else list(zip(items, entries)),
                                      cfg, depth)
    return status, f"vector against tuple: {reason}"


def _chain_values(chain, is_gold: bool) -> tuple[str | None, list[str]] | None:
    """``(label, values)`` of ``label = ... = value`` or ``label = exact \\approx decimal``; label None for an
    approximation of an expression (``\\pi \\approx 3.14``: both sides are values). None when the left side is part
    of the answer."""
    parts, ops = chain
    lhs = parts[0]
    if len(parts) > 6:
        return None
    if not lhs or is_label(lhs):
        # The value is the last part ("x = 2 + 1 = 3"), and also the exact form before the first approximation
        # ("x = \\sqrt{2} \\approx 1.414").
        values = [parts[-1]]
        first_approx = next((i for i, op in enumerate(ops) if op != "="), None)
        if first_approx is not None and first_approx > 0 and parts[first_approx] not in values:
            values.append(parts[first_approx])
        return lhs or None, values
    if len(parts) == 2 and ops[0] != "=" and fast_parse(lhs) is None or (
            len(parts) == 2 and ops[0] != "=" and not fast_parse(lhs).is_Number):
        return None, parts
    return None


def _relation_rule(g: str, p: str, cfg, depth) -> tuple[str, str] | None:
    cg, cp = relation_chain(g), relation_chain(p)
    if cg is None and cp is None:
        return None
    vg = _chain_values(cg, True) if cg is not None else None
    vp = _chain_values(cp, False) if cp is not None else None
    for chain, values in ((cg, vg), (cp, vp)):
        if chain is not None and values is None and any(op != "=" for op in chain[1]):
            # "3 \\approx 4 \\approx 5": an approximation that is neither "label \\approx value" nor
            # "expression \\approx value" is not left to the parser (which reads some side of it).
            return WRONG, "an approximation chain with no single value"
    if cg is not None and cp is None:
        if _HAS_RELATION_RE.search(p):
            return None
        if vg is None:
            # "x + y = 5" against "5": the gold's left side is part of the answer, not a name for the value.
            return WRONG, "the gold is an equation; a value alone does not answer it"
        return _any_value(vg[1], [p], cfg, depth, "labelled gold value")
    if cp is not None and cg is None:
        if vp is None or _HAS_RELATION_RE.search(g):
            return None
        return _any_value([g], vp[1], cfg, depth, "labelled value")
    # Both are chains. Same label: compare the values; one-letter function definitions: rename the variable.
    if vg is None or vp is None or vg[0] is None or vp[0] is None:
        return None
    fg, fp = function_definition(g), function_definition(p)
    if fg is not None and fp is not None and fg[0] == fp[0] and fg[1] != fp[1]:
        body = rename_letter(fp[2], fp[1], fg[1])
        if body is None:
            return None
        status, reason = _compare(fg[2], body, cfg, depth + 1)
        if status not in (CORRECT, WRONG):
            return None
        return status, f"same function up to the name of its variable: {reason}"
    if _string_key(vg[0]) != _string_key(vp[0]):
        return None
    return _any_value(vg[1], vp[1], cfg, depth, "same label")


def _any_value(gold_values, pred_values, cfg, depth, what) -> tuple[str, str] | None:
    """CORRECT when some pair of values is equal, WRONG when every pair was decided unequal, else None (a value
    the parser could not read: the whole answers go on to the general comparison)."""
    reason = "values differ"
    undecided = False
    for a in gold_values:
        for b in pred_values:
            status, reason = _compare(a, b, cfg, depth + 1)
            if status == CORRECT:
                return CORRECT, f"{what}: {reason}"
            undecided = undecided or status != WRONG
    return None if undecided else (WRONG, f"{what}: {reason}")


def _alternatives_rule(g: str, p: str, cfg, depth) -> tuple[str, str] | None:
    """Answers joined by "and" / "or" / ``\\text{ or }`` (or lists of function definitions): the same parts in
    any order."""
    if not (has_word_separator(g) or has_word_separator(p)
            or ("(" in g and "(" in p and "=" in g and "=" in p
                and function_definition(g.split(",")[0]) is not None)):
        return None
    ag, ap = split_alternatives(g, max_parts=8), split_alternatives(p, max_parts=8)
    if ag is None or ap is None or any(_is_prose(x) for x in ag + ap):
        return None  # "f(x)=ax+b, where b is an arbitrary integer, and ...": a sentence, not alternatives
    ag = list({_string_key(x): x for x in ag}.values())
    ap = list({_string_key(x): x for x in ap}.values())
    if len(ag) != len(ap):
        return WRONG, f"{len(ag)} alternatives against {len(ap)}"
    left = list(ap)
    undecided = False
    for a in ag:
        for i, b in enumerate(left):
            status = _compare(a, b, cfg, depth + 1)[0]
            if status == CORRECT:
                del left[i]
                break
            undecided = undecided or status != WRONG
        else:
            return None if undecided else (WRONG, f"no match for the alternative {a}")
    return CORRECT, "the same alternatives"


def _form_rules(g: str, p: str, g_pct: bool, p_pct: bool, cfg, depth: int) -> tuple[str, str] | None:
    if depth > _MAX_FORM_DEPTH or g_pct != p_pct:
        return None
    for rule in (_matrix_rule, _alternatives_rule, _relation_rule):
        decided = rule(g, p, cfg, depth)
        if decided is not None:
            return decided
    return None


def compare_answers(gold: str, pred: str, cfg: VerifierConfig = VerifierConfig()) -> tuple[str, str]:
    """Decide whether two already-extracted answers are equivalent.

    Returns ``(status, reason)`` with status ``correct``, ``wrong`` or ``parse_error``.
    """
    # One symbolic budget for the whole item: the form rules may compare several parts, each of which may reach
    # the parser; none of them arms a budget of its own (an armed budget is never extended by a nested one).
    try:
        with symbolic_budget(cfg):
            return _compare(gold, pred, cfg, 0)
    except BudgetExceeded:
        return PARSE_ERROR, (f"symbolic_budget guard: the symbolic comparison needed more than "
                             f"{min(cfg.symbolic_budget, 0.5 * cfg.timeout):g} s")


def _compare(gold: str, pred: str, cfg: VerifierConfig, depth: int) -> tuple[str, str]:
    m = _COMMA3_RE.match(pred.strip().strip("$"))
    if m is not None and gold.strip().strip("$") == f"{m.group(1)}.{m.group(2)}":
        # "3,125" is 3125 with a thousands separator, or 3.125 with a decimal comma: against a gold written
        # "3.125" (the same digits with a decimal point) only the decimal reading can be meant.
        return CORRECT, "same digits with a decimal comma"
    g_text, g_pct = normalize_answer(gold)
    p_text, p_pct = normalize_answer(pred)
    if not p_text:
        return NO_ANSWER, "empty answer"
    if cfg.string_match and g_pct == p_pct and _string_key(g_text) == _string_key(p_text):
        return CORRECT, "same normalised string"
    # Cheap guards (guards.py) before any parsing: power towers, deep nesting, huge factorials, ...
    rejected = screen(g_text)
    if rejected is not None:
        return PARSE_ERROR, f"gold answer rejected: {rejected}"
    rejected = screen(p_text)
    if rejected is not None:
        return PARSE_ERROR, f"prediction rejected: {rejected}"
    decided = _pre_parse_rules(g_text, p_text)
    if decided is not None:
        return decided
    decided = _form_rules(g_text, p_text, g_pct, p_pct, cfg, depth)
    if decided is not None:
        return decided
    decided = _fast_path(g_text, g_pct, p_text, p_pct, cfg)
    if decided is not None:
        return decided
    for side, text in (("gold answer", g_text), ("prediction", p_text)):
        rejected = screen_for_parser(text)
        if rejected is not None:
            return PARSE_ERROR, f"{side} rejected: {rejected}"
    return _compare_by_parser(g_text, g_pct, p_text, p_pct, cfg)


def _compare_by_parser(g_text, g_pct, p_text, p_pct, cfg) -> tuple[str, str]:
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
            # A match the parser reached by dropping a variable on one side only is not a match.
            lost_g, lost_p = _dropped_letters(g_text, g_obj), _dropped_letters(p_text, p_obj)
            if lost_g != lost_p:
                return WRONG, f"parser dropped {sorted(lost_g ^ lost_p)}"
            lg, lp = _letters(g_text), _letters(p_text)
            if lg != lp and {c.lower() for c in lg} == {c.lower() for c in lp}:
                return WRONG, "variables differ in case"  # the parser folds case: x would equal X
            return CORRECT, reason
    return WRONG, reason


def _count_parts(g: str) -> int:
    """Top-level comma-separated parts of a gold answer (thousands separators do not count)."""
    g = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", g)
    depth, parts = 0, 1
    for ch in g:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts += 1
    return parts


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
        return Verdict(PARSE_ERROR, f"gold answer rejected: answer_length guard: {len(g)} characters "
                                    f"(limit max_answer_chars={cfg.max_answer_chars})", gold=g[:200])
    try:
        ans, rule = extract_answer(prediction, require_think_close=cfg.require_think_close,
                                   last_number_fallback=cfg.last_number_fallback, take_whole=cfg.take_whole,
                                   max_len=cfg.max_answer_chars, mode=cfg.extraction, parts=_count_parts(g))
    except Exception as e:  # noqa: BLE001
        return Verdict(PARSE_ERROR, f"extraction failed ({type(e).__name__})", gold=g)
    if ans is None:
        return Verdict(NO_ANSWER, rule, gold=g)
    if len(ans) > cfg.max_answer_chars:
        return Verdict(PARSE_ERROR, f"prediction rejected: answer_length guard: {len(ans)} characters "
                                    f"(limit max_answer_chars={cfg.max_answer_chars})", answer=ans[:200], gold=g)
    try:
        status, reason = compare_answers(g, ans, cfg)
    except RecursionError:
        return Verdict(PARSE_ERROR, "expression too deeply nested", answer=ans, gold=g)
    except Exception as e:  # noqa: BLE001
        return Verdict(PARSE_ERROR, f"comparison failed ({type(e).__name__})", answer=ans, gold=g)
    return Verdict(status, f"{reason} [{rule}]", answer=ans, gold=g)
