"""Extraction modes and the equivalence rules per category, positives and negatives, plus the labelled case set."""

import json
from pathlib import Path

import pytest

from exploresft_jax.rewards import VerifierConfig, VerifierPool, extract_answer
from exploresft_jax.rewards.extract import all_boxed
from exploresft_jax.rewards.fastparse import fast_parse, fast_structure, same_structure

CASES = Path(__file__).resolve().parents[1] / "data" / "verifier_cases.jsonl"
CFG = VerifierConfig(timeout=10.0)

# (category, gold, prediction, equal): cases beside those of the data file, one rule each.
RULES = [
    ("no_boxed", "6", "Answer: $6$", True),
    ("no_boxed", "6", "Answer: $7$", False),
    ("no_boxed", "21", "Il y a donc 21 élèves.", True),
    ("no_boxed", "21", "答案为 $21$。", True),
    ("no_boxed", "21", "Die Antwort lautet 12.", False),
    ("no_boxed", "3", "nothing here answers it", False),
    ("number_formats", "1200300", r"\boxed{1{,}200{,}300}", True),
    ("number_formats", "0.35", r"\boxed{35 %}", True),
    ("number_formats", "1.05", "La réponse est 1,05", True),
    ("number_formats", "1.05", "La réponse est 1,50", False),
    ("number_formats", "9.99", r"\boxed{9.9}", False),                 # decimals differ in a written digit
    ("number_formats", "1,2", r"\boxed{1.2}", False),                 # a gold list is not a decimal comma
    ("relations", r"z \geq 0", r"\boxed{z >= 0}", True),
    ("relations", r"z \geq 0", r"\boxed{z \gt 0}", False),
    ("relations", r"m \neq 2", r"\boxed{m \ne 2}", True),
    ("matrices", r"\begin{pmatrix}0\\1\end{pmatrix}", r"\boxed{\left[\begin{array}{c}0\\1\end{array}\right]}", True),
    ("matrices", r"\begin{pmatrix}0\\1\end{pmatrix}", r"\boxed{\left[\begin{array}{c}1\\0\end{array}\right]}", False),
    ("text", r"\text{positive}", r"\boxed{Positive}", True),
    ("text", r"\text{positive}", r"\boxed{\text{negative}}", False),
    ("text", r"\mathcal{F}", r"\boxed{F}", True),
    ("text", r"\mathcal{F}", r"\boxed{f}", False),
    ("several_answers", ["-1", "5"], r"First \boxed{-1}; then, for the other case, \boxed{5}", True),
    ("several_answers", ["-1", "5"], r"First \boxed{-1}; then, for the other case, \boxed{6}", False),
    ("false_positive_traps", "12:00", r"\boxed{2:00}", False),
    ("false_positive_traps", "P'", r"\boxed{P}", False),
    ("false_positive_traps", r"y", r"\boxed{Y}", False),
    ("false_positive_traps", "7", r"\boxed{7b}", False),
]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(2, CFG) as p:
        yield p


def _check(pool, rows):
    verdicts = pool.check_batch([r["gold"] for r in rows], [r["prediction"] for r in rows])
    return [(r, v) for r, v in zip(rows, verdicts) if v.correct != r["equal"]]


def test_rule_cases(pool):
    rows = [dict(category=c, gold=g, prediction=p, equal=e) for c, g, p, e in RULES]
    bad = _check(pool, rows)
    assert not bad, bad


def test_labelled_case_set(pool):
    # The side-by-side benchmark's case set: every verdict as labelled, and no false positive in any category.
    rows = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    assert len(rows) >= 150 and len({r["category"] for r in rows}) >= 7
    for r in rows:
        assert set(r) == {"category", "gold", "prediction", "equal"}
    bad = _check(pool, rows)
    assert not bad, bad


def test_extraction_modes():
    text = "We add them up.\nSo the total is 42."
    assert extract_answer(text, mode="permissive")[0] == "42"
    assert extract_answer(text, mode="standard")[0] is None
    assert extract_answer(text, mode="boxed_only")[0] is None
    assert extract_answer(r"so \boxed{42}", mode="boxed_only") == ("42", "boxed")
    assert extract_answer("42", mode="boxed_only")[0] is None                 # a bare answer is not a box
    assert extract_answer("The final answer is 42", mode="boxed_only")[0] is None
    assert extract_answer(r"see \boxed{4", mode="permissive") == (None, "malformed box")
    with pytest.raises(ValueError):
        extract_answer("x", mode="loose")
    with pytest.raises(ValueError):
        VerifierConfig(extraction="loose")


@pytest.mark.parametrize("text,expected", [
    ("Answer $ 13 $", "13"),
    (r"Hence \[ \frac{1}{4} \]", r"\frac{1}{4}"),
    ("**Final Answer**\n$$ 0.5 $$", "0.5"),
    ("Final answer: the largest $n$ is 99.", "99"),
    ("La réponse est $\\sqrt{2}$.", r"\sqrt{2}"),
    ("因此答案是 15。", "15"),
    ("Natalia sold 48 clips.\n#### 72", "72"),
    ("First 3 + 4 = 7.\nThen 7 * 2 = 14", "14"),
    ("So she has 5 apples.", "5"),
    ("We add 3 and 4 to get 7. Doubling gives 14 apples in the basket.", "14"),
    ("Answer: 7", "7"),                               # an answer phrase beats taking the text whole
    ("The probability is 1/2.", "1/2"),               # a closing fraction is one number
])
def test_permissive_chain(text, expected):
    assert extract_answer(text, mode="permissive")[0] == expected


@pytest.mark.parametrize("text", [
    "we tried 2 and then 3 of them",                  # a number in the middle of a one-line remark
    "no answer here",                                 # a bare "answer" must be followed by math
    "I cannot solve this.",
    "Doubling 7 gives 14. Then we are not sure what comes next.",   # the last sentence has no number
])
def test_permissive_chain_declines(text):
    assert extract_answer(text, mode="permissive")[0] is None


def test_several_boxes_for_a_multi_part_gold():
    text = r"(a) \boxed{3} holds, while for part (b) we find \boxed{8}."
    assert extract_answer(text, mode="permissive")[0] == "8"
    assert extract_answer(text, mode="permissive", parts=2)[0] == "3, 8"
    assert all_boxed(r"\boxed{1} x \boxed{\boxed{2}} \boxed{1}") == ["1", r"\boxed{2}"]


def test_fast_parser_only_accepts_unambiguous_forms():
    assert str(fast_parse(r"2\sqrt{3}")) == "2*sqrt(3)"
    for s in [r"1\frac{1}{2}", "2 3", "odd", "ab", "1/2x", "x^23", "E'", "11:00", r"2^{2^{2^{30}}}", "3!",
              r"\sin 2x", r"\sin^2 x"]:
        assert fast_parse(s) is None, s
    # f(x) is an uninterpreted function, never the product x*f; "a b" (with a space) is a product.
    assert fast_parse("f(x)") != fast_parse("x f") and fast_parse("a b") == fast_parse("b a")
    assert same_structure(fast_structure("(1,2),(3,4)"), fast_structure("(1, 2), (3, 4)"))
    assert not same_structure(fast_structure("(1,2)"), fast_structure("[1,2]"))
    assert not same_structure(fast_structure("1,2"), fast_structure("2,1"))   # undecided, never "equal"


def test_full_path_decides_numbers_and_structures_without_sympy_parse(pool):
    cfg = CFG.replace(string_match=False)
    golds = ["12", r"\frac{7}{3}", "(1,2),(3,4)", "k=2", r"x^2+1"]
    verdicts = pool.check_batch(golds, [rf"\boxed{{{g}}}" for g in golds], config=cfg)
    assert [v.status for v in verdicts] == ["correct"] * len(golds)
    assert all("same normalised string" not in v.reason for v in verdicts)
