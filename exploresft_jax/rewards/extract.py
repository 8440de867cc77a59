"""Final-answer extraction from a model response.

Pure Python (no sympy), linear in the length of the text, and it never raises on a string input.

Order of rules (the first that yields an answer wins):
1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched; ``\\boxed 5`` also works); boxes right before it that
   are separated only by ``,``, ``;``, ``and``, ``or``, ``\\quad`` or ``$`` are joined into one list and repeats
   are dropped;
2. a prediction that is itself one math expression (``1/2``, ``$\\frac{1}{2}$``, ``x \\in [0, 1)``) is taken whole;
3. ``final answer is X`` (including the Minerva ``... is $X$. I hope it is correct.`` form);
4. ``the answer is X``;
5. optionally (off by default: it produces false positives) the last number in the text.

``mode`` selects the chain (``VerifierConfig.extraction``):

- ``boxed_only``: rule 1 only. For RL rewards where answering in a box is part of the task.
- ``standard``: rules 1-5 above.
- ``permissive`` (the evaluation default): rules 1-2, then the answer phrases ``final answer is/:``,
  ``the answer is``, ``answer:``, ``####``, French/Spanish/German/Chinese equivalents, a bare ``Answer``; then
  the last display or inline math span; then the last number (or a bare ``\\frac{}{}`` / ``\\sqrt{}`` written
  without math delimiters), but only where it closes the response (at most one word after it, such as a unit) or
  sits in the last line of a multi-line solution or the last sentence of a solution of several sentences, or
  follows a verb of result in the closing sentence ("... so there are 25 students in the class altogether."),
  and is not the operand of an operator (``2-(3)``, ``-(-(5))``). In CJK text a number right after or before a
  CJK character stands on its own (``走了12千米``), ``答：`` is an answer phrase, and Chinese numerals with one
  reading (``四分之三``, ``百分之二十``, ``十二个``) are written in digits first. A response
  with a malformed box gets no answer in every mode: the box was the intended answer.
"""

from __future__ import annotations

import re

from .forms import cjk_numerals

__all__ = ["extract_answer", "last_boxed", "all_boxed", "box_spans", "strip_think", "is_single_expression",
           "EXTRACTION_MODES"]

EXTRACTION_MODES = ("boxed_only", "standard", "permissive")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_THINK_CLOSE = "</think>"
# Separators allowed between boxes that belong to one multi-part answer.
_JOIN_GAP_RE = re.compile(
    r"^(?:\s|\$|\\[,;:! ]|\\quad|\\qquad|\\text\{\s*(?:and|or)\s*\}|,|;|and|or|&|\\\\|\\\(|\\\)|\\\[|\\\])*$")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANCHORS = ("final answer is", "the answer is")
_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{[^{}]*\}")
_CMD_RE = re.compile(r"\\[A-Za-z]+")
_WORD_RE = re.compile(r"[A-Za-z]{2,}")
_INNER_DELIM_RE = re.compile(r"\\[\[\]()]")
_CJK_RE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\u3000-\u303f\uff01-\uff5e]")


def strip_think(text: str, *, require_think_close: bool = False) -> str | None:
    """Return the part of ``text`` after the last ``</think>``.

    Without a ``</think>`` the whole text is returned, or ``None`` when ``require_think_close`` is set (a response
    that never finished thinking has no answer under that policy).
    """
    pos = text.rfind(_THINK_CLOSE)
    if pos < 0:
        return None if require_think_close else text
    return text[pos + len(_THINK_CLOSE):]


_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.S)
_MAX_BOXES_TRIED = 64


def _match_braces(text: str, open_pos: int, max_len: int) -> int:
    """Index just past the ``}`` matching the ``{`` at ``open_pos``, or -1 (unbalanced or longer than max_len).

    ``\\{`` and ``\\}`` are literal characters in LaTeX and are skipped, not counted. Only brace and backslash
    tokens are visited (a regex skips plain text).
    """
    depth = 0
    end = min(len(text), open_pos + max_len + 2)
    for tok in _BRACE_TOKEN_RE.finditer(text, open_pos, end):
        ch = tok.group()
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return tok.end()
    return -1


def _box_at(text: str, m: re.Match, max_len: int) -> tuple[int, int, str] | None:
    """(start, end, content) of the box whose command matched at ``m``, or None if it is malformed."""
    i = m.end()
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == "{":
        close = _match_braces(text, i, max_len)
        if close < 0:
            return None
        return m.start(), close, text[i + 1:close - 1]
    # "\boxed 5$" form: up to the next "$", newline or end of text.
    j = i
    while j < n and j - i <= max_len and text[j] not in "$\n":
        j += 1
    content = text[i:j].strip()
    return (m.start(), j, content) if content else None


def last_boxed(text: str, *, max_len: int = 4096) -> str | None:
    """Content of the last well-formed ``\\boxed{}``/``\\fbox{}`` in ``text``, joined with adjacent boxes.

    Boxes whose content is longer than ``max_len`` are treated as malformed; only the last 64 box commands are
    tried. Both bound the work on adversarial inputs (many unclosed boxes).
    """
    parts = _last_box_group(text, max_len)
    return ", ".join(parts) if parts else None


def _last_box_group(text: str, max_len: int) -> list[str]:
    """The contents of the last box and the boxes joined to it, in order, repeats dropped."""
    matches = list(_BOX_RE.finditer(text))
    boxes: list[tuple[int, int, str]] = []
    # Only the last boxes can hold the answer; the cap bounds the work on adversarial inputs.
    for m in reversed(matches[-_MAX_BOXES_TRIED:]):
        box = _box_at(text, m, max_len)
        if box is None:
            continue
        if boxes:
            # Boxes nested inside the one already taken are part of its content.
            if box[1] > boxes[-1][0]:
                continue
            gap = text[box[1]:boxes[-1][0]]
            if len(gap) > 70 or not _JOIN_GAP_RE.match(gap):
                break
        boxes.append(box)
        if len(boxes) >= 16:
            break
    parts: list[str] = []
    for _, _, content in reversed(boxes):
        content = content.strip()
        if content and content not in parts:
            parts.append(content)
    return parts


def all_boxed(text: str, *, max_len: int = 4096) -> list[str]:
    """Contents of every well-formed top-level box in ``text``, in order, repeats dropped (at most the last 64)."""
    out: list[str] = []
    for _, _, content in box_spans(text, max_len=max_len):
        if content and content not in out:
            out.append(content)
    return out


def box_spans(text: str, *, max_len: int = 4096) -> list[tuple[int, int, str]]:
    """``(start, end, content)`` of every well-formed top-level box in ``text``, in order (at most the last 64)."""
    matches = list(_BOX_RE.finditer(text))[-_MAX_BOXES_TRIED:]
    out: list[tuple[int, int, str]] = []
    end = -1
    for m in matches:
        if m.start() < end:
            continue  # nested in the previous box
        box = _box_at(text, m, max_len)
        if box is None:
            continue
        end = box[1]
        out.append((box[0], box[1], box[2].strip()))
    return out


def is_single_expression(text: str, *, max_len: int = 512) -> bool:
    """Whether ``text`` reads as one math expression rather than prose (so it is taken whole as the answer).

    True for ``1/2``, ``$\\frac{1}{2}$``, ``x \\in [0, 1)``, ``\\text{Evelyn}``, ``5 apples``; False when the text
    has two or more words outside LaTeX commands and ``\\text{}``, spans several lines, or is long.
    """
    s = text.strip()
    if not s or len(s) > max_len or "\n" in s or _BOX_RE.search(s):
        return False  # a malformed box is a failed answer, not an expression
    inner = _unwrap_math(s)
    if "$" in inner or "#" in inner or _INNER_DELIM_RE.search(inner) or _CJK_RE.search(inner):
        return False  # prose around a math span, a "####" marker, or words of a script without spaces
    inner = _TEXT_CMD_RE.sub(" ", inner)
    inner = _CMD_RE.sub(" ", inner)
    return len(_WORD_RE.findall(inner)) <= 1


def _unwrap_math(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left):len(s) - len(right)].strip()
    return s


def _clean(ans: str) -> str:
    """Trim sentence punctuation and markdown around an anchored answer."""
    ans = ans.strip()
    for _ in range(4):
        before = ans
        ans = ans.strip().strip("*").strip()
        ans = ans.lstrip(":").strip()
        # A trailing "." ends the sentence ("is 5."); a decimal point always has a digit after it.
        if ans.endswith(".") or ans.endswith("。"):
            ans = ans[:-1]
        ans = _unwrap_math(ans)
        if ans == before:
            break
    return ans.strip()


def _after_anchor(text: str, anchor: str) -> str | None:
    lower = text.lower()
    pos = lower.rfind(anchor)
    if pos < 0:
        return None
    rest = text[pos + len(anchor):]
    # Minerva few-shot format: "The final answer is $X$. I hope it is correct."
    hope = rest.find(". I hope")
    if 0 <= hope < 1024:
        cand = _clean(rest[:hope])
        if cand:
            return cand
    rest = rest.lstrip(" \t:*")
    span = _MATH_SPAN_RE.match(rest)
    if span is not None:
        cand = next(g for g in span.groups() if g is not None).strip()
        return cand or None
    line = rest.split("\n", 1)[0]
    # Cut at a sentence end: ". " or a final "." (a decimal point is followed by a digit).
    m = re.search(r"\.(?:\s|$)", line)
    if m is not None:
        line = line[:m.start()]
    cand = _clean(line[:1024])
    return cand or None


# Answer phrases of the permissive chain, most specific first; the last occurrence of the first phrase found wins.
_PERMISSIVE_ANCHORS = [
    ("final answer", re.compile(r"final\s+answer[\s*:：]{0,4}(?:is\b|[:：])?", re.I)),
    ("the answer is", re.compile(r"\banswer\s+is\b", re.I)),
    ("answer:", re.compile(r"\banswer\s*\**\s*[:：]", re.I)),
    ("####", re.compile(r"####")),
    ("réponse", re.compile(r"r[ée]ponse(?:\s+finale)?\s*(?:est\b|[:：])", re.I)),
    ("respuesta", re.compile(r"respuesta(?:\s+final)?\s*(?:es\b|[:：])", re.I)),
    ("antwort", re.compile(r"antwort\s*(?:ist\b|lautet\b|[:：])", re.I)),
    ("答案", re.compile(r"(?:最终)?答案\s*(?:是|为|[:：])?")),
    ("答：", re.compile(r"(?<![\u4e00-\u9fff])答\s*[:：]")),
    ("answer", re.compile(r"\banswer\b", re.I)),
]
# Words each phrase contains. In an ASCII text (where ignoring case is plain lower-casing) a phrase is only
# searched for when its words are there, so a long response without them costs one lower() instead of nine
# regex scans.
_ANCHOR_WORDS = {"final answer": ("final", "answer"), "the answer is": ("answer",), "answer:": ("answer",),
                 "####": ("####",), "réponse": ("ponse",), "respuesta": ("respuesta",), "antwort": ("antwort",),
                 "答案": ("答案",), "答：": ("答",), "answer": ("answer",)}
_DIGIT_RE = re.compile(r"\d")
# Inside an anchored sentence, the value comes after the last copula ("the smallest $k$ is 17").
_COPULA_RE = re.compile(r"\s(?:is|are|equals|est|es|ist|是|为)\s|=|：|:")
_SENTENCE_END_RE = re.compile(r"[.!?。！？](?:\s|$)|[。！？]")
# A word character of an alphabetic script: a number glued to one is part of a name (x2, 3rd). CJK text has no
# spaces, so a number right after or before a CJK character ("走了12千米") stands on its own.
_CJK_CHARS = "\u2e80-\u9fff\u3040-\u30ff\uac00-\ud7af\uf900-\ufaff"
_ALNUM = rf"[^\W{_CJK_CHARS}]"
_GROUP_SEP = r"(?:,|\{,\}|,\\!|\u2009|\u202f)"
_LAST_NUMBER_RE = re.compile(
    rf"(?<!{_ALNUM})(?<![./])[-+]?\d+/\d+(?!{_ALNUM})(?!/)"
    rf"|(?<!{_ALNUM})(?<!\.)[-+]?(?:\d{{1,2}}(?:{_GROUP_SEP}\d{{2}})+{_GROUP_SEP}\d{{3}}(?!\d)"
    rf"|\d{{1,3}}(?:{_GROUP_SEP}\d{{3}})+|\d+)(?:[.,]\d+)?"
    rf"|(?<!{_ALNUM})(?<!\.)[-+]?\.\d+")
_TRAILER_RE = re.compile(r"^(?:\s|[.,;:!?。！？*$)\]}]|\\[\])]|\\%|%|€|£|¥|\\\$|\$)*"
                         r"(?:[^\W\d_][\w²³/^.]*|\\text\{[^{}]{0,20}\})?"
                         r"(?:\s|[.,;:!?。！？*$)\]}]|\\[\])])*$")


_MATHY_RE = re.compile(r"[\d\\^=+]")


def _permissive_anchor(text: str) -> tuple[str, str] | None:
    lower = text.lower() if text.isascii() else None
    for name, pat in _PERMISSIVE_ANCHORS:
        if lower is not None and not all(w in lower for w in _ANCHOR_WORDS[name]):
            continue
        last = None
        for last in pat.finditer(text):
            pass
        if last is None:
            continue
        rest = text[last.end():].lstrip(" \t\n:*：")
        ans = _answer_from_phrase(rest)
        # A bare "answer" is often just prose ("no answer here"): it must be followed by math.
        if ans and (name != "answer" or _MATHY_RE.search(ans)):
            return ans, name
    return None


def _answer_from_phrase(rest: str) -> str | None:
    span = _MATH_SPAN_RE.match(rest)
    if span is not None:
        cand = next(g for g in span.groups() if g is not None).strip()
        return cand or None
    line = rest.split("\n", 1)[0][:1024]
    m = _SENTENCE_END_RE.search(line)
    if m is not None and m.start() > 0:
        line = line[:m.start()]
    cand = _clean(line)
    if not cand:
        return None
    if is_single_expression(cand):
        return cand
    # Prose: the value follows the last copula; else the last math span or number in the sentence.
    cop = None
    for cop in _COPULA_RE.finditer(cand):
        pass
    if cop is not None:
        tail = _clean(cand[cop.end():])
        if tail and is_single_expression(tail):
            return tail
    spans = list(_MATH_SPAN_RE.finditer(cand))
    if spans:
        return next(g for g in spans[-1].groups() if g is not None).strip() or None
    nums = _LAST_NUMBER_RE.findall(cand)
    return nums[-1] if nums else None


def _last_math_span(text: str) -> str | None:
    last = None
    for last in _MATH_SPAN_RE.finditer(text):
        pass
    if last is None:
        return None
    return _clean(next(g for g in last.groups() if g is not None)) or None


_OPERATORS = ("-", "+", "*", "/", "^", "×", "÷", "·", "−", "\\cdot", "\\times", "\\div")
_OPERAND_LOOKBACK = 200


def _is_operand(text: str, start: int) -> bool:
    """Whether the number at ``start`` is an operand of an expression: an operator before it, perhaps with opening
    brackets between (``2-(3)``, ``-(-(5))``: reading 3 or 5 would lose the sign or the operation). More than
    ``_OPERAND_LOOKBACK`` characters of brackets before it count as an expression too."""
    j, stop = start, max(0, start - _OPERAND_LOOKBACK)
    while j > stop:
        ch = text[j - 1]
        if ch.isspace() or ch in "([{":
            j -= 1
        elif text.endswith("\\left", stop, j):
            j -= 5
        else:
            return text.endswith(_OPERATORS, 0, j)
    return j > 0


# LaTeX written without math delimiters in prose ("所以概率为\frac{3}{4}。", "so it is \sqrt{2}"): a fraction, root
# or pi with an optional sign, leading number and simple operations.
_BARE_ATOM = r"(?:\\[dt]?frac\s*\{[^{}]{1,40}\}\s*\{[^{}]{1,40}\}|\\sqrt(?:\[\d\])?\s*\{[^{}]{1,40}\}|\\pi(?![A-Za-z]))"
_BARE_LATEX_RE = re.compile(rf"[-+]?(?:\d+(?:\.\d+)?\s*)?{_BARE_ATOM}(?:\s*[-+*/]?\s*(?:\d+(?:\.\d+)?|{_BARE_ATOM}))*")
# In running prose, the result follows a copula or a verb of result ("there are 25 students", "= 18 dollars").
_RESULT_RE = re.compile(r"(?:\b(?:is|are|was|were|be|equals?|gives?|get|gets|got|obtain|obtains|makes?|has|have|"
                        r"had|total(?:s|ling)?|remain(?:s|ing)?|needs?|costs?|takes?|leaves?|left\s+with|"
                        r"y\s+a|est|sont|vaut|valent|fait|font|es|son|hay|ist|sind|gibt|ergibt|betr[äa]gt)\b|=)"
                        r"[^.!?。！？\d]{0,40}$", re.I)


def _closing_number(text: str) -> str | None:
    """The last number, where it closes the response or the last line of a multi-line solution."""
    body = text.rstrip()
    if _DIGIT_RE.search(body) is None and "\\pi" not in body:
        return None
    nums = list(_LAST_NUMBER_RE.finditer(body))
    bare = None
    if "\\" in body:
        for bare in _BARE_LATEX_RE.finditer(body[-2000:]):
            pass
    if bare is not None:
        offset = max(0, len(body) - 2000)
        start, end = bare.start() + offset, bare.end() + offset
        if body.count("{", 0, start) - body.count("}", 0, start) > 0:
            bare = None  # inside an argument of another command (\sqrt{\sqrt{4}}): not a whole expression
    if bare is not None:
        if not nums or nums[-1].start() >= start or nums[-1].end() <= end:
            # The last number is inside (or before) a bare fraction or root: that expression is the candidate.
            cand = _closing_candidate(body, start, end, bare.group().strip())
            if cand is not None or not nums or nums[-1].end() <= end:
                return cand
    if not nums:
        return None
    m = nums[-1]
    value = m.group()
    pct = re.match(r"\s*(?:\\%|%)", body[m.end():])
    if pct is not None:
        value += "%"  # "20%" is 0.2 as well as 20
    return _closing_candidate(body, m.start(), m.end() + (pct.end() if pct else 0), value)


def _closing_candidate(body: str, start: int, end: int, value: str) -> str | None:
    if _is_operand(body, start):
        return None
    after = body[end:]
    if _TRAILER_RE.match(after):
        return value
    lines = [ln for ln in body.split("\n") if ln.strip()]
    if len(lines) >= 2 and "\n" not in after:
        return value
    # A one-line solution of several sentences: the number must be in the last sentence.
    ends = [e.end() for e in _SENTENCE_END_RE.finditer(body) if e.end() < len(body.rstrip(".!?。！？ "))]
    if ends and start >= ends[-1]:
        return value
    # Running prose: the number follows a verb of result in its sentence, and at most a short phrase without
    # numbers or math closes that sentence, which ends the response with a full stop ("... so there are 25
    # students in the class altogether."). An unfinished sentence ("5 apples in total and more") does not count.
    head = body[ends[-1] if ends else 0:start]
    tail = after.rstrip(".!。！ ")
    if (body.endswith((".", "!", "。", "！")) and "\n" not in after and not _SENTENCE_END_RE.search(tail)
            and "$" not in tail and "\\" not in tail
            and len(tail.split()) <= 8 and _RESULT_RE.search(head)):
        return value
    return None


def extract_answer(text: object, *, require_think_close: bool = False, last_number_fallback: bool = False,
                   take_whole: bool = True, max_len: int = 4096, mode: str = "standard",
                   parts: int = 1) -> tuple[str | None, str]:
    """Extract the final answer from a response.

    Args:
      text: the model response (anything else yields no answer).
      require_think_close: only look after ``</think>``; a response without it has no answer.
      last_number_fallback: use the last number in the text when no other rule applies (off by default: it
        rewards stray numbers).
      take_whole: take a response that is itself one math expression as the answer.
      max_len: longest answer accepted from a box.
      mode: ``boxed_only``, ``standard`` or ``permissive`` (see the module docstring).
      parts: how many parts the gold answer has. With 2 or more, every box of the response is taken (in order,
        repeats dropped) when the last box and its neighbours hold fewer parts.

    Returns:
      ``(answer, rule)``: the answer string (None when nothing was found) and the name of the rule that found
      it (``boxed``, ``whole``, ``final answer is``, ``the answer is``, ``last number``) or why nothing was found.
    """
    if mode not in EXTRACTION_MODES:
        raise ValueError(f"unknown extraction mode {mode!r}; expected one of {EXTRACTION_MODES}")
    if not isinstance(text, str):
        return None, "prediction is not a string"
    tail = strip_think(text, require_think_close=require_think_close)
    if tail is None:
        return None, "no </think> in the response"
    scopes = [tail] if (tail is text or require_think_close) else [tail, text]
    # A box anywhere beats the other rules; the text after </think> is searched before the whole response.
    for scope in scopes:
        group = _last_box_group(scope, max_len)
        if group:
            if parts >= 2 and len(group) < parts:
                every = all_boxed(scope, max_len=max_len)
                if len(every) > len(group):
                    return ", ".join(every[-parts:]), "boxed (all)"
            return ", ".join(group), "boxed"
    if mode == "boxed_only":
        return None, "no box (boxed_only)"
    if mode == "permissive":
        if _BOX_RE.search(tail):
            return None, "malformed box"
        if _CJK_RE.search(tail[-4000:]):
            # Chinese numerals with one reading (四分之三, 百分之二十, 十二个) are written in digits first.
            tail = tail[:-4000] + cjk_numerals(tail[-4000:])
        # An answer phrase beats taking the text whole ("Answer: 7" is one word and a number).
        found = _permissive_anchor(tail)
        if found is not None:
            return found[0], found[1]
    if take_whole and is_single_expression(tail):
        whole = _unwrap_math(tail)
        if whole:
            return whole, "whole"
    for scope in scopes:
        for anchor in _ANCHORS:
            ans = _after_anchor(scope, anchor)
            if ans:
                return ans, anchor
    if mode == "permissive":
        span = _last_math_span(tail)
        if span:
            return span, "last math"
        num = _closing_number(tail)
        if num is not None:
            return num, "last number"
    if last_number_fallback:
        nums = _NUMBER_RE.findall(tail)
        if nums:
            return nums[-1].replace(",", ""), "last number"
    return None, "no answer found"
