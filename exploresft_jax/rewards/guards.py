"""Cheap pre-checks that reject answers no parser should be given, before any symbolic work.

Adversarial answers (power towers, deep nesting, factorials of huge numbers, megabyte strings, stray control
characters, unbalanced braces) do not hang the verifier (the pool's hard timeout sees to that) but each one
costs the full timeout. These checks read the answer string a few times (microseconds for a typical answer, a few
milliseconds for the longest allowed, 2000 characters) and turn such inputs into a ``parse_error`` whose reason
names the guard, e.g. ``nesting_depth guard: brackets nested 150 deep (limit 25)``.

They only reject, never accept, and only forms far outside real answers. The limits below are set generously
against the gold answers of every benchmark we evaluate on (2,866 golds: at most ~210 characters, brackets nested
at most 4 deep, no number over 11 digits, no exponent inside an exponent), so an ordinary answer never trips one.
They run after the identical-string check: an answer written exactly like its gold is still correct.

The size estimate: a short recursive-descent pass over the LaTeX tokens bounds ``log10 |value|`` of every
sub-expression (a letter counts as at most 10) and whether it is made of numbers only (``\\pi`` and ``e``
included). Numbers only means sympy evaluates it, exactly or numerically (``9^{9^{9}}`` is an integer of 369
million digits, ``(10^{9})!`` worse, ``2^{9^{12345^{\\pi}}}`` has an exponent mpmath cannot hold), so the digit
count of such powers, factorials and binomials is capped. Powers of a symbol are not evaluated, so only their
numeric exponent is capped (spot checks and integration bounds would still evaluate them). Chains follow the
parser: ``a^b^c`` is ``(a^b)^c``, ``3!!`` is ``(3!)!``.

In an answer with an integral, sum, product, limit or derivative, a symbolic exponent over
``MAX_CALCULUS_EXPONENT`` (64) is rejected (``calculus_exponent``): evaluating ``\\int_0^\\infty e^{-x^{300}} dx`` or
``\\sum n^{-300}`` costs seconds. A matrix environment of more than ``MAX_MATRIX_ENTRIES`` entries is rejected
(``matrix_size``). :func:`screen_for_parser` is a second screen, applied only to answers that the parser-free rules
could not decide: too many tokens, parentheses nested too deep or too many powers for the LaTeX grammar
(``parse_cost``). The symbolic stage itself runs under ``VerifierConfig.symbolic_budget`` (``symbolic_budget``).

Extracted answers longer than ``VerifierConfig.max_answer_chars`` (2000) are a ``parse_error`` too (the
``answer_length`` guard, in ``equivalence.judge``; a box that long counts as malformed). Responses themselves may
be megabytes long: extraction is linear in the length of the text.
"""

from __future__ import annotations

import math
import re
import unicodedata

from exploresft_jax.rewards.latex import DELIMITER_SIZING, FRACTION_COMMANDS, PRODUCT_COMMANDS

__all__ = ["screen", "screen_for_parser", "MAX_CALCULUS_EXPONENT", "MAX_PARSER_TOKENS", "MAX_PARSER_PAREN_DEPTH",
           "MAX_PARSER_POWERS", "MAX_MATRIX_ENTRIES", "MAX_NESTING_DEPTH", "MAX_NUMBER_DIGITS", "MAX_EXACT_DIGITS",
           "MAX_SYMBOLIC_EXPONENT",
           "MAX_TOWER_HEIGHT", "MAX_BIG_OPERATOR_TERMS", "GUARDS"]

# Brackets ( [ { \{ (any mix, \left/\right included) nested deeper than this. Real answers stay under ~5
# (benchmark golds: 4). The LaTeX grammar's full-context prediction costs ~0.2 s per nested parenthesis and
# Python's recursion limit ends the parse near 110 nested \frac: that is where the 150-deep fraction went wrong.
MAX_NESTING_DEPTH = 25
# Digits in one written number (integer and decimal part). Real answers: at most a few dozen.
MAX_NUMBER_DIGITS = 1000
# Digits of an integer sympy would compute exactly: a power, factorial or binomial of numbers only
# (10^{100000}, 25000!). Up to this size the exact arithmetic takes milliseconds; 2^{2023}, 2004!, \binom{10^9}{5}
# are far below it.
MAX_EXACT_DIGITS = 100_000
# Numeric exponent of a power whose base has a symbol (x^{10000}). Real answers: x^{2023} at most.
MAX_SYMBOLIC_EXPONENT = 10_000
# Exponents nested inside exponents (e^{-x^{2}} has 2; 2^{2^{2^{n}}} has 3).
MAX_TOWER_HEIGHT = 3
# Terms of a \sum or \prod with numeric limits (\prod_{k=1}^{10^{6}} k is a factorial of a million).
MAX_BIG_OPERATOR_TERMS = 10_000

# Numeric exponent on a symbolic base inside an integral, sum, product, limit or derivative
# (\int_0^\infty e^{-x^{300}} dx, \sum n^{-300}): evaluating such an operator symbolically or numerically costs
# seconds, and real answers that leave one unevaluated have small exponents.
MAX_CALCULUS_EXPONENT = 64
# Entries of one matrix environment (a row of hundreds of entries). Real answers: a few dozen at most.
MAX_MATRIX_ENTRIES = 400
# Answers that reach the LaTeX grammar (after the parser-free rules had their chance): its cost grows with the
# number of tokens (about 1 ms each), with the nesting of parentheses (about 100 ms at 8 deep, 1 s at 12) and with
# the number of powers (about 9 ms each). Benchmark golds: at most 130 tokens, parentheses 1 deep, 7 powers.
MAX_PARSER_TOKENS = 250
MAX_PARSER_PAREN_DEPTH = 6
MAX_PARSER_POWERS = 24

GUARDS = ("answer_length", "characters", "braces", "nesting_depth", "number_digits", "exponent_tower", "power_size",
          "symbolic_exponent", "factorial_size", "binomial_size", "big_operator_range", "calculus_exponent",
          "matrix_size", "parse_cost", "symbolic_budget")
_CALCULUS_RE = re.compile(r"\\(?:[io]+int|int|sum|prod|lim|limsup|liminf)(?![A-Za-z])|\\frac\s*\{\s*d"
                          r"|\\partial|\\mathrm\{d\}")

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BRACKET_RE = re.compile(r"\\.|[{}()\[\]]", re.S)  # an escaped character is one token: \{ \} \\ \(
_NUMBER_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+")
# Only these can make a value large; an answer without any of them needs no sizing.
_SIZING_RE = re.compile(r"[\^!]|\*\*|binom|Gamma")
_TOKEN_RE = re.compile(r"\\[A-Za-z]+|\\.|\d+(?:\.\d*)?|\.\d+|\*\*|[A-Za-z]|\s+|.", re.S)
_DROPPED = DELIMITER_SIZING | {"\\middle", "\\big", "\\Big", "\\bigg", "\\Bigg",
            "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\biggl", "\\biggr", "\\Biggl", "\\Biggr", "\\displaystyle",
            "\\limits", "\\nolimits", "\\,", "\\;", "\\:", "\\!", "\\ ", "\\quad", "\\qquad"}
# The brackets _check_brackets counts, so the descent below recurses at most MAX_NESTING_DEPTH levels.
_OPEN = {"(", "[", "{", "\\{"}
_CLOSE = {")", "]", "}", "\\}"}
# Between terms: the size of a sum or list is about that of its largest term.
_SEPARATORS = {"+", "-", ",", ";", ":", "=", "<", ">", "&", "|", "\\\\", "\\pm", "\\mp", "\\le", "\\ge", "\\ne",
               "\\leq", "\\geq", "\\neq", "\\lt", "\\gt", "\\approx", "\\equiv", "\\sim", "\\in", "\\cup",
               "\\cap", "\\setminus", "\\to", "\\rightarrow", "\\Rightarrow", "\\implies", "\\iff", "\\mid",
               "\\vert", "\\lvert", "\\rvert", "\\|", "\\land", "\\lor", "\\wedge", "\\vee", "\\text", "\\mbox"}
_MULTIPLY = PRODUCT_COMMANDS | {"*", "\\ast"}
_DIVIDE = {"/", "\\div", "\\over"}
_FRACS = FRACTION_COMMANDS
_BINOMS = {"\\binom", "\\dbinom", "\\tbinom"}
# Commands whose ^ and _ are limits, not powers or subscripts of a value.
_LIMIT_CMDS = {"\\sum", "\\prod", "\\int", "\\iint", "\\iiint", "\\oint", "\\lim", "\\limsup", "\\liminf",
               "\\max", "\\min", "\\sup", "\\inf", "\\bigcup", "\\bigcap", "\\coprod"}
_LOG10_LETTER = 1.0      # a letter stands for some value up to 10
# pi and e are numbers to the parser: towers of them are evaluated (numerically), so they are sized as numbers.
_LOG10_PI = math.log10(math.pi)
_LOG10_E = math.log10(math.e)


class _Rejected(Exception):
    def __init__(self, guard: str, detail: str):
        super().__init__(guard)
        self.guard = guard
        self.detail = detail


def _pow10(x: float) -> float:
    return 10.0 ** x if x < 300 else math.inf


def _digits(x: float) -> str:
    return f"about {x:.3g} digits" if math.isfinite(x) else "an astronomical number of digits"


def _check_characters(s: str) -> None:
    m = _CONTROL_RE.search(s)
    if m is not None:
        raise _Rejected("characters", f"control character U+{ord(m.group()):04X}")
    if not s.isascii():
        for ch in s:
            if not ch.isascii():
                cat = unicodedata.category(ch)
                if cat in ("Cc", "Cs", "Co", "Cn"):
                    raise _Rejected("characters", f"unsupported character U+{ord(ch):04X} ({cat})")


def _check_brackets(s: str) -> None:
    """Unescaped braces must balance (LaTeX groups); brackets of any kind may nest MAX_NESTING_DEPTH deep.
    Parentheses and square brackets need not balance (half-open intervals)."""
    braces = depth = deepest = 0
    for m in _BRACKET_RE.finditer(s):
        t = m.group()
        if t in ("{", "\\{", "(", "["):
            depth += 1
            deepest = max(deepest, depth)
            if t == "{":
                braces += 1
        elif t in ("}", "\\}", ")", "]"):
            depth = max(0, depth - 1)
            if t == "}":
                braces -= 1
                if braces < 0:
                    raise _Rejected("braces", f"unmatched '}}' at position {m.start()}")
    if braces:
        raise _Rejected("braces", f"{braces} unclosed '{{'")
    if deepest > MAX_NESTING_DEPTH:
        raise _Rejected("nesting_depth", f"brackets nested {deepest} deep (limit {MAX_NESTING_DEPTH})")


def _check_numbers(s: str) -> None:
    for m in _NUMBER_RE.finditer(s):
        digits = len(m.group()) - ("." in m.group())
        if digits > MAX_NUMBER_DIGITS:
            raise _Rejected("number_digits", f"a number of {digits} digits (limit {MAX_NUMBER_DIGITS})")


def _tokens(s: str) -> list[str]:
    out = []
    for m in _TOKEN_RE.finditer(s):
        t = m.group()
        if t[0].isspace() or t in _DROPPED:
            continue
        out.append("^" if t == "**" else t)
    return out


def _number_log10(t: str) -> float:
    whole = t.split(".")[0].lstrip("0")
    if len(whole) <= 15:
        v = float(t)
        return math.log10(v) if v > 1 else 0.0
    return float(len(whole))


class _Size:
    """Bounds ``(log10 |value|, numbers only)`` over the token list; raises _Rejected when a bound passes a limit."""

    def __init__(self, toks: list[str], symbolic_limit: float = MAX_SYMBOLIC_EXPONENT, symbolic_guard: str = ""):
        self.toks = toks
        self.i = 0
        self.tower = 0  # exponents enclosing the current position
        self.symbolic_limit = symbolic_limit
        self.symbolic_guard = symbolic_guard

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def run(self) -> None:
        while self.i < len(self.toks):
            self.expr()
            if self.i < len(self.toks):
                self.i += 1  # a stray closing bracket

    def expr(self) -> tuple[float, bool]:
        """A sum, list or relation: terms of factors."""
        best, numeric, terms = 0.0, True, 0
        cur, in_term, divisor = 0.0, False, False
        while True:
            t = self.peek()
            if t is None or t in _CLOSE:
                break
            if t in _SEPARATORS:
                self.i += 1
                if t in ("\\text", "\\mbox") and self.peek() == "{":
                    self.skip_group()
                if in_term:
                    best, terms = max(best, cur), terms + 1
                    cur, in_term = 0.0, False
                divisor = False
                continue
            if t in _MULTIPLY or t in _DIVIDE:
                self.i += 1
                divisor = t in _DIVIDE
                continue
            size, num = self.factor()
            numeric = numeric and num
            if not divisor:  # dividing never makes a value larger in magnitude than its numerator bound
                cur += size
            in_term, divisor = True, False
        if in_term:
            best, terms = max(best, cur), terms + 1
        return best + (math.log10(terms) if terms > 1 else 0.0), numeric

    def group(self) -> tuple[float, bool]:
        """A bracketed group, the opening bracket already taken."""
        size = self.expr()
        if self.peek() is not None:
            self.i += 1  # its closing bracket (any kind: intervals mix them)
        return size

    def skip_group(self) -> None:
        self.i += 1
        depth = 1
        while self.i < len(self.toks) and depth:
            t = self.toks[self.i]
            depth += (t == "{") - (t == "}")
            self.i += 1

    def arg(self) -> tuple[float, bool]:
        """A command argument or an unbraced exponent: a braced group or one token."""
        t = self.peek()
        if t is None:
            return 0.0, True
        self.i += 1
        if t in _OPEN:
            return self.group()
        return self.atom(t)

    def atom(self, t: str) -> tuple[float, bool]:
        if _NUMBER_RE.fullmatch(t):
            return _number_log10(t), True
        if t in _OPEN:
            return self.group()
        if t in _FRACS:
            num, a = self.arg()
            _, b = self.arg()
            return num, a and b
        if t == "\\sqrt":
            if self.peek() == "[":
                self.i += 1
                self.group()
            size, num = self.arg()
            return size / 2, num
        if t in _BINOMS:
            return self.binomial(self.arg(), self.arg())
        if t in _LIMIT_CMDS:
            return self.limits(t)
        if t == "\\Gamma" and self.peek() == "(":
            self.i += 1
            return self.factorial(self.group())
        if t == "\\pi":
            return _LOG10_PI, True
        if t == "e":
            return _LOG10_E, True
        if t[0].isalpha() or t[0] == "\\":
            return _LOG10_LETTER, False
        return 0.0, True  # punctuation the parser will reject or ignore

    def factor(self) -> tuple[float, bool]:
        while self.peek() in ("-", "+"):
            self.i += 1
        t = self.peek()
        if t is None:
            return 0.0, True
        self.i += 1
        size, numeric = self.atom(t)
        while True:  # postfix operators, left to right as the parser reads them
            t = self.peek()
            if t == "^":
                self.i += 1
                size, numeric = self.power(size, numeric)
            elif t == "_":
                self.i += 1
                if self.peek() == "{":
                    self.skip_group()
                elif self.peek() is not None:
                    self.i += 1
            elif t == "!":
                self.i += 1
                size, numeric = self.factorial((size, numeric))
            elif t in ("'", "\\prime"):
                self.i += 1
            else:
                return size, numeric

    def exponent(self) -> tuple[float, bool, bool]:
        """``(size, numbers only, contains a power)`` of the exponent after a ``^``."""
        self.tower += 1
        try:
            if self.tower > MAX_TOWER_HEIGHT:
                raise _Rejected("exponent_tower", f"exponents nested more than {MAX_TOWER_HEIGHT} deep "
                                f"(limit {MAX_TOWER_HEIGHT})")
            start = self.i
            size, numeric = self.arg()
            stacked = "^" in self.toks[start:self.i]
            return size, numeric, stacked
        finally:
            self.tower -= 1

    def power(self, base: float, base_numeric: bool) -> tuple[float, bool]:
        exp, exp_numeric, stacked = self.exponent()
        value = _pow10(exp)
        size = 0.0 if base == 0 else base * value
        if base_numeric and exp_numeric:
            if size > MAX_EXACT_DIGITS:
                guard = "exponent_tower" if stacked else "power_size"
                raise _Rejected(guard, f"a power of {_digits(size)} (limit {MAX_EXACT_DIGITS})")
            return size, True
        if exp_numeric and value > self.symbolic_limit:
            guard = "exponent_tower" if stacked else (self.symbolic_guard or "symbolic_exponent")
            where = " inside an integral, sum, product, limit or derivative" if self.symbolic_guard else ""
            raise _Rejected(guard, f"an exponent of {_digits(exp)} on a symbolic base{where} "
                            f"(limit {self.symbolic_limit:g})")
        return size, False

    def factorial(self, arg: tuple[float, bool]) -> tuple[float, bool]:
        size, numeric = arg
        n = _pow10(size)
        digits = n * max(size, 1.0)  # log10(n!) < n log10(n)
        if numeric and digits > MAX_EXACT_DIGITS:
            raise _Rejected("factorial_size", f"a factorial of {_digits(digits)} (limit {MAX_EXACT_DIGITS})")
        return digits, numeric

    def binomial(self, top: tuple[float, bool], bottom: tuple[float, bool]) -> tuple[float, bool]:
        (n, n_numeric), (k, k_numeric) = top, bottom
        digits = min(_pow10(k), _pow10(n)) * max(n, 1.0)  # C(n, k) <= n^k
        if n_numeric and k_numeric and digits > MAX_EXACT_DIGITS:
            raise _Rejected("binomial_size", f"a binomial coefficient of {_digits(digits)} "
                            f"(limit {MAX_EXACT_DIGITS})")
        return digits, n_numeric and k_numeric

    def limits(self, cmd: str) -> tuple[float, bool]:
        """``\\sum_{k=1}^{N}`` and friends: the limits are read, not raised to."""
        sizes = []
        for _ in range(2):
            t = self.peek()
            if t not in ("_", "^"):
                break
            self.i += 1
            sizes.append(self.arg())
        if cmd in ("\\sum", "\\prod"):
            for size, numeric in sizes:
                if numeric and _pow10(size) > MAX_BIG_OPERATOR_TERMS:
                    raise _Rejected("big_operator_range", f"a {cmd[1:]} over up to {_digits(size)} terms "
                                    f"(limit {MAX_BIG_OPERATOR_TERMS})")
        return max([_LOG10_LETTER] + [s for s, _ in sizes]), False


_ENV_RE = re.compile(r"\\begin\s*\{([a-zA-Z*]+)\}")


def _check_matrices(text: str) -> None:
    """Entries of each matrix environment, counted from its ``&`` and ``\\\\`` (a cheap upper bound)."""
    if "\\begin" not in text:
        return
    for m in _ENV_RE.finditer(text):
        end = text.find("\\end", m.end())
        body = text[m.end():end if end >= 0 else len(text)]
        rows = body.count("\\\\") + 1
        cells = body.count("&") + rows
        if cells > MAX_MATRIX_ENTRIES:
            raise _Rejected("matrix_size", f"a matrix of about {cells} entries (limit {MAX_MATRIX_ENTRIES})")


_PARSER_TOKEN_RE = re.compile(r"\\[A-Za-z]+|\\.|\d+(?:\.\d*)?|[A-Za-z]|\S")


def screen_for_parser(text: str) -> str | None:
    """None when ``text`` may go to the LaTeX grammar, else ``"parse_cost guard: <detail>"``: more tokens, deeper
    parentheses or more powers than any real answer has (see the limits above). Applied only to answers that the
    parser-free rules could not decide, so a long list of numbers or a wide numeric matrix is still compared."""
    powers = text.count("^")
    if powers > MAX_PARSER_POWERS:
        return f"parse_cost guard: {powers} powers (limit {MAX_PARSER_POWERS})"
    depth = deepest = 0
    for ch in text:
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth = max(0, depth - 1)
    if deepest > MAX_PARSER_PAREN_DEPTH:
        return f"parse_cost guard: parentheses nested {deepest} deep (limit {MAX_PARSER_PAREN_DEPTH})"
    if len(text) > MAX_PARSER_TOKENS:
        n = len(_PARSER_TOKEN_RE.findall(text))
        if n > MAX_PARSER_TOKENS:
            return f"parse_cost guard: {n} tokens (limit {MAX_PARSER_TOKENS})"
    return None


def screen(text: str) -> str | None:
    """None when ``text`` (an extracted, normalised answer) may go to the parser, else the reason it may not:
    ``"<guard> guard: <detail>"`` with ``<guard>`` one of :data:`GUARDS`."""
    try:
        _check_characters(text)
        _check_brackets(text)
        _check_numbers(text)
        _check_matrices(text)
        if _SIZING_RE.search(text):
            if _CALCULUS_RE.search(text):
                _Size(_tokens(text), MAX_CALCULUS_EXPONENT, "calculus_exponent").run()
            else:
                _Size(_tokens(text)).run()
    except _Rejected as e:
        return f"{e.guard} guard: {e.detail}"
    except RecursionError:  # commands nested without braces (\\frac\\frac\\frac...)
        return "nesting_depth guard: commands nested too deeply to size"
    except Exception:  # noqa: BLE001 - a guard must never fail an answer by its own error; the parser decides
        return None
    return None
