"""Answer forms read before any parsing: Chinese numerals, digit grouping, labelled values, alternatives, matrices.

Pure Python (no sympy), linear in the length of the answer. Each reader only recognises a form with one reading
and returns None (or the text unchanged) otherwise, so the caller can fall back to the general comparison:

- :func:`cjk_numerals`: Chinese numerals in a sentence, where the reading is unambiguous: fractions
  (``四分之三`` = 3/4, ``3分之2`` = 2/3), percentages (``百分之二十`` = 20%) and a numeral followed by a measure
  word (``十二个`` = 12个); a numeral inside a word (``一共``, ``三角形``) is left alone;
- :func:`ungroup_digits`: an integer written with digit groups, Western (``1,234,567``) or Indian (lakh / crore:
  ``12,34,567``, ``1,00,00,000``) with commas, ``,\\!``, ``{,}``, ``\\!`` or thin spaces. Plain commas in the
  Indian pattern are a grouping only when a later group starts with ``0`` (``1,00,000``); ``12,34,567`` with plain
  commas may be a list of three numbers and is left alone;
- :func:`relation_chain`: ``lhs = rhs`` / ``lhs \\approx rhs`` chains, with :func:`is_label` telling a left side
  that names the quantity (``x``, ``V_1:V_2``, ``S_{\\triangle ABC}``, ``f(x)``, ``\\angle ABC``) from one that is part
  of the answer (``x+y``, ``2x``, ``x^2``);
- :func:`split_alternatives`: answers joined by words (``and`` / ``or`` / ``\\text{ and }``), ``;`` or commas;
- :func:`function_definition`: ``f(x) = ...`` with a one-letter argument, and :func:`rename_letter`;
- :func:`matrix_rows`: the entries of a ``pmatrix`` / ``bmatrix`` / ``matrix`` / ``array``, also inside an extra
  pair of ``( )``, ``\\left( \\right)`` or ``[ ]``.
"""

from __future__ import annotations

import re

__all__ = ["cjk_numerals", "cn_integer", "ungroup_digits", "relation_chain", "is_label", "split_alternatives",
           "function_definition", "rename_letter", "matrix_rows", "strip_cjk_suffix", "has_word_separator"]

# -- Chinese numerals ---------------------------------------------------------------------------------------
_CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8,
              "九": 9}
_CN_SMALL = {"十": 10, "百": 100, "千": 1000}
_CN_BIG = {"万": 10 ** 4, "亿": 10 ** 8}
_CN = "零〇一二两三四五六七八九十百千万亿"
_CN_NUM = rf"[{_CN}]+"
_ARABIC = r"\d+(?:\.\d+)?"
# Measure words after which a Chinese numeral is a count ("十二个", "三本书"). Words that also start common
# compounds with numerals ("一次函数", "一元二次方程", "三角形") are not in the list.
_MEASURE = ("个|人|本|只|米|千米|公里|厘米|毫米|天|种|条|块|辆|岁|名|位|张|道|页|棵|件|支|根|朵|头|匹|层|"
            "分钟|小时|秒|克|千克|吨|升|倍|组|对|份|颗|盒|箱|瓶|杯|斤|周|年|月|题|场|所|间|座")
_CN_FRACTION_RE = re.compile(rf"({_ARABIC}|{_CN_NUM})\s*分之\s*({_ARABIC}|{_CN_NUM})")
_CN_PERCENT_RE = re.compile(rf"百分之\s*({_ARABIC}|{_CN_NUM})")
# The shortest numeral before a measure word: "十二千米" is 12 km, not 12000 m.
# A numeral that is the whole value after a copula, ending the sentence ("这个数是一百。").
_CN_VALUE_RE = re.compile(rf"(?<=是|为|於|于)\s*({_CN_NUM})(?=\s*(?:[。！？，,.!?；;]|$))")
_CN_COUNT_RE = re.compile(rf"(?<![{_CN}\d])([{_CN}]+?)(?=(?:{_MEASURE}))")


def cn_integer(s: str) -> int | None:
    """The value of a Chinese integer numeral (``十二`` = 12, ``两千零五`` = 2005, ``三万`` = 30000), or None."""
    if not s or any(ch not in _CN_DIGITS and ch not in _CN_SMALL and ch not in _CN_BIG for ch in s):
        return None
    if len(s) > 1 and all(ch in _CN_DIGITS for ch in s):
        return int("".join(str(_CN_DIGITS[ch]) for ch in s))  # digit by digit: 二〇二四
    total = section = 0
    digit = None
    for ch in s:
        if ch in _CN_DIGITS:
            if digit:
                return None  # two digits in a row inside a positional numeral (a zero only marks a gap)
            digit = _CN_DIGITS[ch]
        elif ch in _CN_SMALL:
            section += (1 if digit is None else digit) * _CN_SMALL[ch]
            digit = None
        else:
            section += digit or 0
            if section == 0:
                return None
            total += section * _CN_BIG[ch]
            section, digit = 0, None
    return total + section + (digit or 0)


def _cn_value(s: str) -> str | None:
    if re.fullmatch(_ARABIC, s):
        return s
    v = cn_integer(s)
    return None if v is None else str(v)


def cjk_numerals(text: str) -> str:
    """``text`` with its unambiguous Chinese numerals written in digits (see the module docstring)."""
    def frac(m):
        den, num = _cn_value(m.group(1)), _cn_value(m.group(2))
        return m.group() if den is None or num is None or den == "0" else f"{num}/{den}"

    def pct(m):
        v = _cn_value(m.group(1))
        return m.group() if v is None else f"{v}%"

    def count(m):
        v = cn_integer(m.group(1))
        return m.group() if v is None else str(v)

    text = _CN_PERCENT_RE.sub(pct, text)
    text = _CN_FRACTION_RE.sub(frac, text)
    text = _CN_VALUE_RE.sub(count, text)
    return _CN_COUNT_RE.sub(count, text)


_CJK_CHAR = "\u2e80-\u9fff\u3040-\u30ff\uac00-\ud7af\uf900-\ufaff"
_CJK_SUFFIX_RE = re.compile(rf"^(.*?[\d}}])\s*[{_CJK_CHAR}]{{1,4}}[。.]?$")


def strip_cjk_suffix(s: str) -> str:
    """``12千米`` -> ``12``: a unit or particle of at most four CJK characters after a number or a fraction."""
    m = _CJK_SUFFIX_RE.match(s)
    if m is None or re.search(f"[{_CJK_CHAR}]", m.group(1)):
        return s
    return m.group(1).strip()


# -- digit grouping -----------------------------------------------------------------------------------------
_SEP = r"(?:,\\!|\\!,\\!|\\!,|\{,\}|\\!|\\,|\\ |,| )"
_WESTERN_RE = re.compile(rf"^([-+]?)(\d{{1,3}}(?:{_SEP}\d{{3}})+)(\.\d+)?$")
_INDIAN_RE = re.compile(rf"^([-+]?)(\d{{1,2}}(?:{_SEP}\d{{2}})+{_SEP}\d{{3}})(\.\d+)?$")
_SEPS_RE = re.compile(_SEP)


def ungroup_digits(s: str) -> str:
    """The plain integer for a number written with digit groups, else ``s`` unchanged (see the module
    docstring). All separators of one number must be the same."""
    if len(s) > 80:
        return s
    for pat, indian in ((_WESTERN_RE, False), (_INDIAN_RE, True)):
        m = pat.match(s)
        if m is None:
            continue
        seps = set(_SEPS_RE.findall(m.group(2)))
        if len(seps) != 1:
            return s
        groups = _SEPS_RE.split(m.group(2))
        if groups[0].startswith("0"):
            return s  # "0{,}125" is a decimal comma, not a digit group
        if indian and seps == {","} and not any(g.startswith("0") for g in groups[1:]):
            return s  # "12,34,567" may be a list
        return m.group(1) + "".join(groups) + (m.group(3) or "")
    return s


# -- labelled values and relation chains --------------------------------------------------------------------
_OPEN, _CLOSE = "([{", ")]}"
_CHAIN_OP_RE = re.compile(r"\\approx(?![A-Za-z])|\\simeq(?![A-Za-z])|=")
_OTHER_REL_RE = re.compile(r"\\(?:le|ge|ne|lt|gt|leq|geq|neq|in|subset|subseteq|to|implies|iff|Rightarrow|sim|"
                           r"equiv|cong|propto)(?![A-Za-z])|[<>]")


def _top_level(s: str, pattern: re.Pattern) -> list[re.Match]:
    """Matches of ``pattern`` outside brackets and braces."""
    depth_at = [0] * len(s)
    depth = 0
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        depth_at[i] = depth
        if ch == "\\" and i + 1 < n:
            nxt = s[i + 1]
            depth_at[i + 1] = depth
            if nxt == "{":      # \{ opens a set
                depth += 1
            elif nxt == "}":
                depth = max(0, depth - 1)
            i += 2
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        i += 1
    return [m for m in pattern.finditer(s) if depth_at[m.start()] == 0]


def relation_chain(s: str) -> tuple[list[str], list[str]] | None:
    """``(parts, ops)`` of ``a = b \\approx c`` (only ``=``, ``\\approx`` and ``\\simeq`` at the top level, no other
    relation, no top-level comma or semicolon), or None."""
    if len(s) > 400 or ("=" not in s and "\\approx" not in s and "\\simeq" not in s):
        return None
    # A top-level comma makes a list ("x = 1, y = 2"), except a decimal comma inside a number ("x = 0,3").
    if _top_level(s, re.compile(r";|,(?!\d)|(?<!\d),")) or _top_level(s, _OTHER_REL_RE):
        return None
    ops = _top_level(s, _CHAIN_OP_RE)
    if not ops:
        return None
    parts, start = [], 0
    for m in ops:
        parts.append(s[start:m.start()].strip())
        start = m.end()
    parts.append(s[start:].strip())
    if any(not p for p in parts[1:]):
        return None
    return parts, [m.group() for m in ops]


_LABEL_CMDS = {"angle", "measuredangle", "triangle", "bigtriangleup", "odot", "overline", "overrightarrow",
               "overleftrightarrow", "vec", "hat", "widehat", "bar", "tilde", "arc", "overarc", "text", "mathrm",
               "textrm", "mathit", "mathbf", "operatorname", "left", "right", "frac", "dfrac", "tfrac", "sin", "cos",
               "tan", "cot", "sec", "csc", "log", "ln", "lg", "det", "max", "min", "mid", "vert", "lvert", "rvert",
               "prime", "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta",
               "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi",
               "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega", "cdots"}
_SUBSCRIPT_RE = re.compile(r"_\s*(?:\{[^{}]*\}|\\?[A-Za-z0-9])")
_CALL_ARGS_RE = re.compile(r"(?<=[A-Za-z}'])\s*\(([^()]*)\)")
_SPACING_RE = re.compile(r"\\[,;:! ]|\\q?quad")


def is_label(lhs: str) -> bool:
    """Whether the left side of ``lhs = value`` names the quantity (so the value alone is the answer).

    Names: letters (``x``, ``AB``), Greek letters, subscripts (``V_1``, ``S_{\\triangle ABC}``), primes, bars,
    ``\\angle`` / ``\\triangle`` / ``\\overline``, a function call (``f(x)``, ``P(A)``, ``f(1)``), and ratios or
    quotients of names (``V_1:V_2``, ``\\frac{S_1}{S_2}``, ``a/b``). Anything with a number outside a subscript or a
    call, or an operator (``+``, ``-``, ``^``, ``\\cdot``), is part of the answer, not a label.
    """
    s = _SPACING_RE.sub(" ", lhs.strip())
    if not s or len(s) > 120:
        return False
    s = _SUBSCRIPT_RE.sub(" ", s)
    s = _CALL_ARGS_RE.sub(" ", s)
    if re.search(r"[\d^+\-*=<>!&]", s):
        return False
    for cmd in re.findall(r"\\([A-Za-z]+)", s):
        if cmd not in _LABEL_CMDS:
            return False
    bare = re.sub(r"\\[A-Za-z]+", " ", s)
    if re.search(r"[^A-Za-z\s{}()|:/'\[\].]", bare):
        return False
    return bool(re.search(r"[A-Za-z]", bare) or re.search(r"\\(?!left|right|frac|dfrac|tfrac)[A-Za-z]", s))


# -- alternatives and function definitions -----------------------------------------------------------------
_WORD_SEP_RE = re.compile(r"\\text\s*\{\s*(?:and|or|or\s+else)\s*\}|\\(?:mbox|textrm|mathrm)\s*\{\s*(?:and|or)\s*\}"
                          r"|(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])|\\lor(?![A-Za-z])|\\vee(?![A-Za-z])"
                          r"|\\q?quad(?![A-Za-z])|;|,")
_WORD_ONLY_RE = re.compile(r"\\text\s*\{\s*(?:and|or|or\s+else)\s*\}|\\(?:mbox|textrm|mathrm)\s*\{\s*(?:and|or)\s*\}"
                           r"|(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])|\\lor(?![A-Za-z])|\\vee(?![A-Za-z])")


_EDGE_SPACING_RE = re.compile(r"^(?:\s|\\[,;:! ]|\\q?quad(?![A-Za-z]))+|(?:\s|\\[,;:! ]|\\q?quad(?![A-Za-z]))+$")


def has_word_separator(s: str) -> bool:
    return bool(_top_level(s, _WORD_ONLY_RE))


def split_alternatives(s: str, max_parts: int = 12) -> list[str] | None:
    """The parts of an answer joined at the top level by ``and`` / ``or`` (as words or ``\\text{}``), ``\\lor``,
    ``\\quad``, ``;`` or ``,``; None for one part, more than ``max_parts`` parts, or an empty part."""
    if len(s) > 1000:
        return None
    seps = _top_level(s, _WORD_SEP_RE)
    if not seps:
        return None
    parts, start = [], 0
    for m in seps:
        parts.append(s[start:m.start()].strip())
        start = m.end()
    parts.append(s[start:].strip())
    parts = [_EDGE_SPACING_RE.sub("", p) for p in parts]
    # "1, 2, and 3" and "a \\quad or \\quad b": adjacent separators leave empty parts between them.
    if not parts[0] or not parts[-1]:
        return None
    parts = [p for p in parts if p]
    if len(parts) < 2 or len(parts) > max_parts:
        return None
    return parts


_FUNC_DEF_RE = re.compile(r"^\s*([A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?)\s*\(\s*([A-Za-z])\s*\)\s*=\s*(.+?)\s*$", re.S)


def function_definition(s: str) -> tuple[str, str, str] | None:
    """``(name, variable, body)`` of ``f(x) = body`` (one-letter argument, one ``=``), else None."""
    m = _FUNC_DEF_RE.match(s)
    if m is None or "=" in m.group(3):
        return None
    return m.group(1).replace("{", "").replace("}", ""), m.group(2), m.group(3)


def _letter_re(letter: str) -> re.Pattern:
    return re.compile(rf"(?<![A-Za-z\\]){re.escape(letter)}(?![A-Za-z])")


def rename_letter(body: str, old: str, new: str) -> str | None:
    """``body`` with the free letter ``old`` renamed ``new``; None when ``new`` already occurs as a letter there
    (the renaming would capture it)."""
    if old == new:
        return body
    if _letter_re(new).search(body):
        return None
    return _letter_re(old).sub(new, body)


# -- matrices -----------------------------------------------------------------------------------------------
_ENV_RE = re.compile(r"^\\begin\{(pmatrix|bmatrix|Bmatrix|matrix|smallmatrix|array)\}(\{[^{}]*\})?(.*)"
                     r"\\end\{\1\}$", re.S)
_WRAPPERS = (("\\left(", "\\right)"), ("\\left[", "\\right]"), ("(", ")"), ("[", "]"), ("{", "}"))


def matrix_rows(s: str, max_entries: int = 1024) -> list[list[str]] | None:
    """The entries of a matrix (rows of entry strings), unwrapped from extra brackets; None when ``s`` is not one
    matrix environment, has rows of different lengths, or more than ``max_entries`` entries."""
    s = s.strip()
    for _ in range(3):
        for left, right in _WRAPPERS:
            if s.startswith(left) and s.endswith(right) and "\\begin" in s:
                inner = s[len(left):len(s) - len(right)].strip()
                if inner.startswith("\\begin") and inner.count("\\begin") == 1:
                    s = inner
                    break
        else:
            break
    if s.count("\\begin") != 1:
        return None
    m = _ENV_RE.match(s)
    if m is None:
        return None
    body = m.group(3).strip()
    if body.count("&") + body.count("\\\\") > 2 * max_entries:
        return None
    rows = [r for r in (r.strip() for r in re.split(r"\\\\(?:\s*\[[^\]]*\])?", body)) if r]
    rows = [r.replace("\\hline", "").strip() for r in rows]
    rows = [r for r in rows if r]
    table = [[e.strip() for e in r.split("&")] for r in rows]
    if not table or any(len(r) != len(table[0]) for r in table) or any(not e for r in table for e in r):
        return None
    if len(table) * len(table[0]) > max_entries:
        return None
    return table
