"""Answer forms read before parsing (forms.py), the extended labelled case set, and the cost guards that keep
expensive answers away from the symbolic stage."""

import json
from pathlib import Path

import pytest

from exploresft_jax.rewards import (
    VerifierConfig,
    VerifierPool,
    compare_answers,
    equivalence,
    extract_answer,
    gold_answer,
)
from exploresft_jax.rewards.forms import (
    cjk_numerals,
    cn_integer,
    function_definition,
    is_label,
    matrix_rows,
    relation_chain,
    rename_letter,
    split_alternatives,
    ungroup_digits,
)
from exploresft_jax.rewards.guards import GUARDS, screen, screen_for_parser

DATA = Path(__file__).resolve().parents[1] / "data"
EXTENDED = DATA / "verifier_cases_extended.jsonl"
CFG = VerifierConfig(timeout=10.0)


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(2, CFG) as p:
        yield p


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_extended_case_set(pool):
    rows = _rows(EXTENDED)
    cats = {r["category"] for r in rows}
    assert len(rows) >= 250 and len(cats) >= 10
    for cat in cats:  # every category has both equal pairs and unequal twins
        assert {r["equal"] for r in rows if r["category"] == cat} == {True, False}, cat
    for r in rows:
        assert set(r) == {"category", "gold", "prediction", "equal"}
    verdicts = pool.check_batch([r["gold"] for r in rows], [r["prediction"] for r in rows])
    bad = [(r, v) for r, v in zip(rows, verdicts) if v.correct != r["equal"]]
    assert not bad, bad


def test_chinese_numerals():
    assert [cn_integer(s) for s in ("十二", "两千零五", "一百零八", "三万", "二〇二四", "十")] == [
        12, 2005, 108, 30000, 2024, 10]
    assert cn_integer("一二三x") is None
    assert cjk_numerals("概率是四分之三。") == "概率是3/4。"
    assert cjk_numerals("占3分之2") == "占2/3"
    assert cjk_numerals("增长了百分之二十") == "增长了20%"
    assert cjk_numerals("走了十二千米") == "走了12千米"           # 12 km, not 12000 m
    # A numeral inside a word is not a number: 一共 (altogether), 三角形 (triangle), 一次函数 (linear function).
    for text in ("他一共走了", "三角形的面积", "这是一次函数"):
        assert cjk_numerals(text) == text


def test_chinese_prose_extraction():
    assert extract_answer("所以他一共走了12千米。", mode="permissive")[0] == "12"
    assert extract_answer("所以概率为\\frac{3}{4}。", mode="permissive")[0] == r"\frac{3}{4}"
    assert extract_answer("答：最少需要十二个。", mode="permissive")[0] == "12"
    assert extract_answer("所以增长率是百分之二十。", mode="permissive")[0] == "20%"


def test_digit_groups():
    assert ungroup_digits(r"12,\!34,\!567") == "1234567"
    assert ungroup_digits("1,00,00,000") == "10000000"
    assert ungroup_digits(r"1\!234\!567") == "1234567"
    assert ungroup_digits("12,34,567") == "12,34,567"          # plain commas: may be a list of three numbers
    assert ungroup_digits(r"12,\!34,567") == r"12,\!34,567"    # mixed separators: not one grouping
    assert ungroup_digits("0{,}125") == "0{,}125"              # a decimal comma, not a group


@pytest.mark.parametrize("lhs,label", [
    ("x", True), ("V_1:V_2", True), (r"S_{\triangle ABC}:S_{\triangle DEF}", True), (r"\frac{S_1}{S_2}", True),
    ("f(x)", True), ("f(2)", True), (r"\angle ABC", True), ("AB", True), (r"\sin A", True), ("a_{n}", True),
    ("x+y", False), ("2x", False), ("x^2", False), ("3", False), (r"x \cdot y", False), ("", False),
])
def test_labels(lhs, label):
    assert is_label(lhs) is label


def test_relation_chains_and_alternatives():
    assert relation_chain(r"x = \sqrt{2} \approx 1.41") == (["x", r"\sqrt{2}", "1.41"], ["=", r"\approx"])
    assert relation_chain("x = 0,3") == (["x", "0,3"], ["="])       # a decimal comma is not a list
    assert relation_chain("x = 1, y = 2") is None
    assert relation_chain(r"x \le 3") is None
    assert split_alternatives(r"f(x)=x \text{ or } f(x)=-x") == ["f(x)=x", "f(x)=-x"]
    assert split_alternatives(r"19, 46, and 82") == ["19", "46", "82"]
    assert split_alternatives(r"\{1, 2\}") is None                   # a set is one answer
    assert split_alternatives("[0, 1)") is None
    assert function_definition("f(t) = 2t") == ("f", "t", "2t")
    assert rename_letter(r"t^2 + \tan t", "t", "x") == r"x^2 + \tan x"
    assert rename_letter("t + x", "t", "x") is None                  # x is taken: renaming would capture it


def test_matrix_rows():
    assert matrix_rows(r"\left(\begin{pmatrix}1&2\\3&4\end{pmatrix}\right)") == [["1", "2"], ["3", "4"]]
    assert matrix_rows(r"\begin{array}{cc}1&2\\3&4\end{array}") == [["1", "2"], ["3", "4"]]
    assert matrix_rows(r"\begin{pmatrix}1&2\\3\end{pmatrix}") is None          # ragged
    assert matrix_rows(r"\begin{vmatrix}1&2\\3&4\end{vmatrix}") is None        # a determinant, not a matrix


@pytest.mark.parametrize("gold,pred,status", [
    ("x+y=5", "5", "wrong"),                       # the gold's left side is part of the answer
    ("V_1:V_2=1:8", "8:1", "wrong"),
    (r"f(x)=2x", r"f(t)=2x", "wrong"),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", "10", "wrong"),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1&2&3&4\end{pmatrix}", "wrong"),
    ("1,2", "1.2", "wrong"),                       # a gold list is not a decimal comma
    ("1234567", "12,34,567", "wrong"),             # plain commas in the Indian pattern: a list
    ("3125", "3.125", "wrong"),
    ("3", r"3 \approx 4 \approx 5", "wrong"),       # an approximation chain with no single value
])
def test_form_rules_refuse(gold, pred, status):
    assert compare_answers(gold, pred, CFG)[0] == status


def test_a_bare_expression_inside_another_is_not_the_answer():
    # The innermost \sqrt{4} of \sqrt{\sqrt{4}} is not the value of the response.
    assert extract_answer(r"so the value is \sqrt{\sqrt{4}}.", mode="permissive")[0] != r"\sqrt{4}"
    assert extract_answer(r"so the value is \sqrt{4}.", mode="permissive")[0] == r"\sqrt{4}"


def test_two_box_gold_answer_is_its_final_box():
    assert gold_answer(r"The first step gives \boxed{3}; the requested total is \boxed{5}.") == "5"
    assert gold_answer(r"We find $a=\boxed{2}$, then $b = \boxed{3}$") == "2, 3"
    assert gold_answer(r"\boxed{2} and \boxed{3}") == "2, 3"


@pytest.mark.parametrize("guard,answer", [
    ("calculus_exponent", r"\int_0^{\infty} e^{-x^{300}} dx + \sum_{n=1}^{\infty} n^{-300}"),
    ("calculus_exponent", r"\sum_{n=1}^{\infty} n^{-300}"),
    ("calculus_exponent", r"\frac{d^{100}}{dx^{100}} x^{200}"),
    ("matrix_size", r"\begin{pmatrix}" + "&".join(["1"] * 500) + r"\end{pmatrix}"),
])
def test_new_screen_guards(guard, answer):
    assert guard in GUARDS
    rejected = screen(answer)
    assert rejected is not None and rejected.startswith(f"{guard} guard:"), rejected


@pytest.mark.parametrize("answer", [
    "(" * 8 + "x+1" + ")" * 8,
    "+".join(f"x^{{{i}}}" for i in range(30)),
    r"\{" + ",".join(f"a_{{{i}}}" for i in range(300)) + r"\}",
])
def test_parser_cost_guard(answer):
    assert screen(answer) is None
    assert screen_for_parser(answer).startswith("parse_cost guard:")
    status, reason = compare_answers("3", answer, CFG)
    assert status == "parse_error" and "parse_cost guard" in reason


def test_cheap_rules_still_decide_long_numeric_answers():
    wide = r"\begin{pmatrix}" + "&".join(str(i) for i in range(300)) + r"\end{pmatrix}"
    assert compare_answers(wide, wide.replace("&7&", "&7.0&"), CFG)[0] == "correct"
    assert compare_answers(wide, wide.replace("&7&", "&8&"), CFG)[0] == "wrong"
    assert compare_answers("3", wide, CFG)[0] == "wrong"


def test_symbolic_budget(monkeypatch):
    import time

    def slow(*args):
        time.sleep(5)
        return "correct", "never reached"

    monkeypatch.setattr(equivalence, "_compare_by_parser", slow)
    status, reason = compare_answers(r"\sin x", r"\cos x", CFG.replace(symbolic_budget=0.05, string_match=False))
    assert status == "parse_error" and reason.startswith("symbolic_budget guard"), reason


def test_every_gold_passes_the_parser_screen():
    # None of the benchmark golds or labelled cases is refused by the parser-cost screen.
    from exploresft_jax.eval import BENCHMARKS, load_benchmark

    answers = [r["gold"] for r in _rows(DATA / "verifier_cases.jsonl") + _rows(EXTENDED)]
    for root in (DATA / "benchmarks", Path(__file__).resolve().parents[3] / "shared" / "data" / "benchmarks"):
        if root.is_dir():
            for name in BENCHMARKS:
                try:
                    answers += [pr.answer for pr in load_benchmark(name, str(root))]
                except Exception:  # noqa: BLE001 - a benchmark missing from this copy
                    continue
    for a in answers:
        text = gold_answer(a)
        if text:
            assert screen_for_parser(equivalence.normalize_answer(text)[0]) is None, a
