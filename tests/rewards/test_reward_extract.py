"""Answer extraction rules (pure Python, no verifier processes)."""

import pytest

from exploresft_jax.rewards import extract_answer, is_single_expression, last_boxed

BOXED = [
    (r"so \boxed{5}.", "5"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{1} then \boxed{2}", "2"),                        # last box wins
    (r"\boxed{1} no no no no no no no \boxed{2}", "2"),              # prose between: not joined
    (r"\boxed{(2,2)} \quad \text{and} \quad \boxed{(6,2)}", "(2,2), (6,2)"),
    (r"$\boxed{1}$, $\boxed{2}$ and $\boxed{3}$", "1, 2, 3"),
    (r"**Final Answer** \boxed{840} \boxed{840}", "840"),          # repeats dropped
    (r"\fbox{7}", "7"),
    (r"$\boxed 5$", "5"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),                               # escaped braces are not counted
    (r"\boxed{\frac{a}{b^{2}}} tail", r"\frac{a}{b^{2}}"),
    (r"\boxed{x} and later an unclosed \boxed{y", "x"),
]


@pytest.mark.parametrize("text,expected", BOXED)
def test_boxed(text, expected):
    assert extract_answer(text) == (expected, "boxed")


def test_last_boxed_none():
    assert last_boxed("no box here") is None
    assert last_boxed(r"\boxed{") is None
    assert last_boxed(r"\boxed{}") is None


@pytest.mark.parametrize("text,expected,rule", [
    ("The final answer is $27$. I hope it is correct.", "27", "final answer is"),
    ("Thus the final answer is 3.5.", "3.5", "final answer is"),
    (r"So the answer is $\frac{3}{4}$ and we are done.", r"\frac{3}{4}", "the answer is"),
    ("We get that the answer is 12\nbecause ...", "12", "the answer is"),
    ("THE ANSWER IS: **42**", "42", "the answer is"),
])
def test_anchor_fallbacks(text, expected, rule):
    assert extract_answer(text) == (expected, rule)


@pytest.mark.parametrize("text,expected", [
    ("1/2", "1/2"),
    (r"$\frac{1}{2}$", r"\frac{1}{2}"),
    (r"x \in [0, 1)", r"x \in [0, 1)"),
    (r"\text{Evelyn}", r"\text{Evelyn}"),
    (r"\(3\sqrt{2}\)", r"3\sqrt{2}"),
    ("  -7 ", "-7"),
])
def test_single_expression_taken_whole(text, expected):
    assert extract_answer(text) == (expected, "whole")


@pytest.mark.parametrize("text", ["I think it is 5 or 6", "Let me compute 3 + 4 = 7\nthen 8", "no answer"])
def test_prose_is_not_an_expression(text):
    assert not is_single_expression(text)
    assert extract_answer(text)[0] is None


def test_last_number_fallback_is_opt_in():
    text = "after computing we get 1,234 apples and then 17 pears"
    assert extract_answer(text)[0] is None
    assert extract_answer(text, last_number_fallback=True) == ("17", "last number")


def test_think_policy():
    text = r"<think>maybe \boxed{3}</think> The result is \boxed{4}."
    assert extract_answer(text)[0] == "4"
    unfinished = r"<think>I guess \boxed{3} but keep going"
    assert extract_answer(unfinished)[0] == "3"
    assert extract_answer(unfinished, require_think_close=True) == (None, "no </think> in the response")
    only_inside = r"<think>\boxed{3}</think> so that is it, done here."
    assert extract_answer(only_inside, require_think_close=True)[0] is None
    assert extract_answer(only_inside)[0] == "3"  # without the policy, fall back to the whole text


@pytest.mark.parametrize("bad", [None, 3, b"\\boxed{3}", ["x"]])
def test_non_string_prediction(bad):
    assert extract_answer(bad)[0] is None


def test_adversarial_extraction_terminates():
    # Unclosed boxes, deep braces and long strings: bounded work, no exception.
    assert extract_answer(r"\boxed{" * 20000)[0] is None
    assert extract_answer("{" * 100000 + "}" * 99999)[0] is None
    assert extract_answer("x" * 1_000_000 + r"\boxed{3}") == ("3", "boxed")
