"""A small exact parser for the common answer forms, so most items never reach the LaTeX grammar.

math-verify's ANTLR parser costs tens of milliseconds per answer; most gold answers are integers, decimals,
fractions, radicals and short polynomials. This parser reads that subset into sympy objects:

    numbers (``12``, ``-0.5``, ``.5``), ``+ - * / \\cdot \\times \\div``, implicit products (``2\\sqrt{3}``,
    ``3x``), ``\\frac{a}{b}`` (and ``\\dfrac``/``\\tfrac``), ``\\sqrt{a}``, ``\\sqrt[n]{a}``, ``^{...}``/``^2``,
    parentheses and braces used for grouping, ``\\pi`` and single ASCII letters as symbols.

Anything else (commas, relations, functions, subscripts, primes, colons, factorials, words, a number directly
followed by a number or a fraction, ...) makes it return None, and the caller falls back to the full parser.
So it never has to agree with math-verify on an ambiguous form: it only accepts forms with one reading.
Its results are only used where they are sound: two numbers compared exactly (or with the decimal tolerance),
or two parses that are structurally identical.
"""

from __future__ import annotations

import functools
import re

from exploresft_jax.rewards.latex import DELIMITER_SIZING, FRACTION_COMMANDS, PRODUCT_COMMANDS

__all__ = ["fast_parse", "fast_structure", "same_structure"]

_TOKEN_RE = re.compile(
    r"\s+|(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<cmd>\\[A-Za-z]+)|(?P<letter>[A-Za-z])|(?P<op>[-+*/^(){}\[\]_])")
_FRAC_CMDS = FRACTION_COMMANDS
_MUL_CMDS = PRODUCT_COMMANDS
_IGNORED = DELIMITER_SIZING
_FUNCTIONS = {"\\sin": "sin", "\\cos": "cos", "\\tan": "tan", "\\cot": "cot", "\\sec": "sec", "\\csc": "csc",
              "\\ln": "log", "\\exp": "exp", "\\arcsin": "asin", "\\arccos": "acos", "\\arctan": "atan"}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "kappa",
          "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "phi", "varphi", "chi", "psi", "omega", "Gamma",
          "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega", "hbar"}
_MAX_EXP = 400  # larger integer exponents go to the full parser, which runs under the worker's timeout
_MAX_DIGITS = 60


class _Unsupported(Exception):
    pass


def _tokens(s: str) -> list[tuple[str, str]]:
    """Tokens ``(kind, text)``; a letter written right after another letter, with no space, has kind
    ``glued`` (``ab`` may be a word or a segment name; ``a b`` is a product)."""
    out = []
    pos = 0
    n = len(s)
    spaced = True
    while pos < n:
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            raise _Unsupported(s[pos])
        pos = m.end()
        kind = m.lastgroup
        if kind is None:
            spaced = True
            continue
        if kind == "letter" and not spaced and out and out[-1][0] in ("letter", "glued"):
            kind = "glued"
        spaced = False
        text = m.group()
        if kind == "cmd":
            if text in _IGNORED:
                continue
            if text in _FRAC_CMDS:
                text = "\\frac"
            elif text in _MUL_CMDS:
                text = "*"
            elif text == "\\div":
                text = "/"
            elif text[1:] in _GREEK:
                kind = "letter"
            elif text not in ("\\sqrt", "\\pi", "\\infty") and text not in _FUNCTIONS:
                raise _Unsupported(text)
        out.append((kind, text))
    return out


class _Parser:
    def __init__(self, toks):
        import sympy

        self.sp = sympy
        self.toks = toks
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, text=None):
        tok = self.peek()
        if tok[0] is None or (text is not None and tok[1] != text):
            raise _Unsupported(text)
        self.i += 1
        return tok

    def parse(self):
        e = self.expr()
        if self.i != len(self.toks):
            raise _Unsupported("trailing tokens")
        return e

    def expr(self):
        e = self.term()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            t = self.term()
            e = e + t if op == "+" else e - t
        return e

    def _starts_atom(self, tok) -> bool:
        kind, text = tok
        return kind in ("num", "letter") or text in ("\\frac", "\\sqrt", "\\pi", "(", "{")

    def term(self):
        e, prev_kind = self.unary()
        divided = False
        while True:
            tok = self.peek()
            if tok[1] in ("*", "/"):
                self.take()
                f, prev_kind = self.unary()
                if tok[1] == "*":
                    e = e * f
                    divided = False
                else:
                    if f == 0:
                        raise _Unsupported("division by zero")
                    e = e / f
                    divided = True
            elif self._starts_atom(tok):
                # Implicit product. "2 3" (digits after digits) and "1\frac{1}{2}" (a mixed number) have
                # more than one reading; two letters in a row may be a word; "1/2x" may be 1/(2x).
                if divided:
                    raise _Unsupported("implicit product after a division")
                if tok[0] == "num" and prev_kind in ("num", "letter"):
                    raise _Unsupported("number after number")
                if tok[1] == "\\frac" and prev_kind == "num":
                    raise _Unsupported("mixed number")
                if tok[0] == "glued":
                    raise _Unsupported("word")
                f, prev_kind = self.power()
                e = e * f
            else:
                return e

    def unary(self):
        tok = self.peek()
        if tok[1] == "-":
            self.take()
            e, kind = self.unary()
            return -e, kind
        if tok[1] == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        base, kind = self.atom()
        if self.peek()[1] == "^":
            self.take()
            tok = self.peek()
            if tok[1] == "{":
                exp = self.group()
            elif tok[0] == "num" and tok[1].isdigit():
                self.take()
                # "x^23" in LaTeX is x^2 * 3: only the first digit is the exponent.
                if len(tok[1]) > 1:
                    raise _Unsupported("multi-digit bare exponent")
                exp = self.sp.Integer(tok[1])
            elif tok[0] == "letter":
                self.take()
                exp = self.sp.Symbol(tok[1])
            else:
                raise _Unsupported("exponent")
            if exp.is_Integer and abs(int(exp)) > _MAX_EXP:
                raise _Unsupported("large exponent")
            if exp.is_Integer and base.is_Integer and abs(int(base)).bit_length() * abs(int(exp)) > 20000:
                raise _Unsupported("huge power")  # left to the full parser, under the worker's timeout
            if base == 0 and (exp.is_negative or exp == 0):
                raise _Unsupported("0 to a non-positive power")
            if self.peek()[1] == "^":
                raise _Unsupported("stacked exponent")
            base = base ** exp
            kind = "pow"
        return base, kind

    def arg(self):
        """A command argument: a braced group or one character (``\\frac43`` is 4/3, ``\\sqrt2`` is sqrt 2)."""
        kind, text = self.peek()
        if text == "{":
            return self.group()
        if kind == "letter":
            self.take()
            return self.sp.Symbol(text)
        if kind == "num" and text[0].isdigit():
            self.take()
            if len(text) > 1:
                # Only the first digit is the argument; the rest stays in the stream as the next token.
                self.i -= 1
                self.toks[self.i] = ("num", text[1:])
                if text[1] == ".":
                    raise _Unsupported("argument split inside a decimal")
            return self.sp.Integer(text[0])
        raise _Unsupported("command argument")

    def group(self):
        self.take("{")
        e = self.expr()
        self.take("}")
        return e

    def atom(self):
        sp = self.sp
        kind, text = self.take()
        if kind == "num":
            if len(text) > _MAX_DIGITS:
                raise _Unsupported("long number")
            return (sp.Float(text, max(15, len(text))) if "." in text else sp.Integer(text)), "num"
        if kind == "letter":
            name = text.lstrip("\\")
            if self.peek()[1] == "_":
                # A subscripted name is one symbol: C_{1}, \omega_d, x_0.
                self.take("_")
                sub_kind, sub = self.take()
                if sub == "{":
                    parts = []
                    while self.peek()[1] != "}":
                        k, t = self.take()
                        if k not in ("num", "letter"):
                            raise _Unsupported("subscript")
                        parts.append(t.lstrip("\\"))
                    self.take("}")
                    sub = "".join(parts)
                elif sub_kind == "num" and len(sub) == 1 or sub_kind == "letter":
                    sub = sub.lstrip("\\")
                else:
                    raise _Unsupported("subscript")
                if not sub:
                    raise _Unsupported("empty subscript")
                name = f"{name}_{sub}"
            if self.peek()[1] == "(":
                # f(x): an uninterpreted function, never a product (so f(x) and xf are different trees).
                self.take("(")
                args = [self.expr()]
                self.take(")")
                return sp.Function(name)(*args), "func"
            return sp.Symbol(name), "letter"
        if text == "\\pi":
            return sp.pi, "const"
        if text == "\\infty":
            return sp.oo, "const"
        if text in _FUNCTIONS:
            # Only unambiguous arguments: "\\sin(...)", "\\sin{...}", or one letter ending the product
            # ("\\sin x"). "\\sin 2x", "\\sin^2 x" and "\\sin x y" have more than one reading.
            func = getattr(sp, _FUNCTIONS[text])
            nxt = self.peek()
            if nxt[1] == "(":
                self.take("(")
                a = self.expr()
                self.take(")")
            elif nxt[1] == "{":
                a = self.group()
            elif nxt[0] == "letter":
                self.take()
                a = sp.Symbol(nxt[1])
                follow = self.peek()
                if follow[0] is not None and follow[1] not in ("+", "-", ")", "}", "]"):
                    raise _Unsupported("function argument extent")
            else:
                raise _Unsupported("function argument")
            return func(a), "func"
        if text == "\\frac":
            num = self.arg()
            den = self.arg()
            if den == 0:
                raise _Unsupported("division by zero")
            return num / den, "frac"
        if text == "\\sqrt":
            index = None
            if self.peek()[1] == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
                if not (index.is_Integer and 2 <= int(index) <= 64):
                    raise _Unsupported("root index")
            arg = self.arg()
            return (sp.sqrt(arg) if index is None else sp.root(arg, index)), "sqrt"
        if text == "(":
            e = self.expr()
            self.take(")")
            return e, "paren"
        if text == "{":
            e = self.expr()
            self.take("}")
            return e, "paren"
        raise _Unsupported(text)


@functools.lru_cache(maxsize=8192)
def fast_parse(s: str):
    """A sympy expression for ``s`` when it is in the supported subset, else None. Never raises."""
    if not s or len(s) > 200:
        return None
    try:
        toks = _tokens(s)
        if not toks:
            return None
        return _Parser(toks).parse()
    except (_Unsupported, ZeroDivisionError, OverflowError, ValueError, TypeError, RecursionError):
        return None


_RELATION_SPLIT_RE = re.compile(r"\\le(?![a-z])|\\ge(?![a-z])|\\ne(?![a-z])|[=<>]")
_OPEN, _CLOSE = "([{", ")]}"
_LEFT_RIGHT_RE = re.compile(r"\\(?:m?left|m?right)(?![A-Za-z])")


def _split_top(s: str, sep: str) -> list[str] | None:
    """``s`` split at ``sep`` outside brackets; None when the brackets do not balance."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                return None
        elif ch == sep and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    if depth != 0:
        return None
    parts.append(s[start:])
    return parts


def _item(s: str):
    s = s.strip()
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        inner = _split_top(s[1:-1], ",")
        if inner is not None and len(inner) >= 2 and _split_top(s[1:-1], ",") is not None:
            elems = [fast_parse(x.strip()) for x in inner]
            if all(e is not None for e in elems):
                return ("group", s[0] + s[-1], tuple(elems))
            raise _Unsupported("group element")
    e = fast_parse(s)
    if e is None:
        raise _Unsupported("item")
    return e


@functools.lru_cache(maxsize=8192)
def fast_structure(s: str):
    """A comparable structure for lists, tuples/intervals and single relations of supported expressions.

    ``("rel", op, lhs, rhs)``, ``("list", items)``, ``("group", brackets, elements)`` or an expression; None
    when any piece is outside the subset (``\\\\cup``, sets in ``\\\\{ \\\\}``, functions, ...).
    """
    if not s or len(s) > 400 or "\\{" in s or "\\cup" in s:
        return None
    s = _LEFT_RIGHT_RE.sub("", s)
    try:
        rel = _RELATION_SPLIT_RE.split(s)
        if len(rel) == 2:
            op = _RELATION_SPLIT_RE.search(s).group()
            lhs, rhs = fast_parse(rel[0].strip()), fast_parse(rel[1].strip())
            if lhs is None or rhs is None:
                return None
            return ("rel", op, lhs, rhs)
        if len(rel) > 2:
            return None
        parts = _split_top(s, ",")
        if parts is None:
            return None
        if len(parts) == 1:
            return _item(parts[0])
        return ("list", tuple(_item(p) for p in parts))
    except (_Unsupported, ZeroDivisionError, OverflowError, ValueError, TypeError, RecursionError):
        return None


def _leaf_equal(a, b) -> bool:
    import sympy

    if isinstance(a, sympy.Rational) and isinstance(b, sympy.Rational):
        return a == b
    if isinstance(a, sympy.Float) or isinstance(b, sympy.Float):
        # Identical decimals only; tolerances are the caller's business.
        return isinstance(a, sympy.Float) and isinstance(b, sympy.Float) and a == b
    return bool(a == b)


def same_structure(a, b) -> bool:
    """True when two structures have the same shape and identical leaves, in the same order.

    Only ever used to accept: identical shapes are equal under every reading (set, tuple, interval), so a
    False here means "not decided", never "different".
    """
    if isinstance(a, tuple) and isinstance(b, tuple):
        if len(a) != len(b) or a[0] != b[0]:
            return False
        if a[0] == "rel":
            return a[1] == b[1] and _leaf_equal(a[2], b[2]) and _leaf_equal(a[3], b[3])
        if a[0] == "group":
            return a[1] == b[1] and len(a[2]) == len(b[2]) and all(map(_leaf_equal, a[2], b[2]))
        return len(a[1]) == len(b[1]) and all(map(same_structure, a[1], b[1]))
    if isinstance(a, tuple) or isinstance(b, tuple):
        return False
    return _leaf_equal(a, b)
