"""Equivalence verdicts for every answer category, positives and negatives, through the process pool."""

import pytest

from exploresft_jax.rewards import VerifierConfig, VerifierPool

CFG = VerifierConfig(timeout=10.0)

# (gold, prediction) pairs that must be judged correct.
CORRECT_PAIRS = [
    # numbers
    ("3", r"The answer is \boxed{3}."),
    (r"\frac{1}{2}", "0.5"),
    ("0.5", r"\boxed{\frac{1}{2}}"),
    (r"\frac{1}{3}", r"\boxed{0.333333}"),
    ("12000", r"\boxed{12,000}"),
    ("1234567", r"\boxed{1,234,567}"),
    (r"4.5\times10^{33}", r"\boxed{4.5e33}"),
    ("6.02e23", r"\boxed{6.02 \times 10^{23}}"),
    ("10\\%", r"\boxed{10}"),
    ("10\\%", r"\boxed{0.1}"),
    ("25", r"\boxed{25\%}"),
    ("106^\\circ", r"\boxed{106}"),
    ("30", r"\boxed{30^{\circ}}"),
    ("27.0", r"\boxed{27}"),
    (27.0, r"\boxed{27}"),
    ("-2", r"\boxed{-2}"),
    ("5", r"\boxed{\$5}"),
    ("7.5", r"\boxed{7.5 \text{ m/s}}"),
    ("18", r"\boxed{18 \text{ dollars}}"),
    ("1.6", r"\boxed{\frac{8}{5}}"),
    # LaTeX forms
    (r"\frac{9}{7}", r"\boxed{\dfrac{9}{7}}"),
    (r"2\sqrt{3}", r"\boxed{\sqrt{12}}"),
    (r"\frac{\pi}{2}", r"\boxed{\frac{1}{2}\pi}"),
    (r"\sqrt{2}", r"\boxed{1.41421356}"),
    (r"\text{Evelyn}", r"\boxed{\text{Evelyn}}"),
    (r"\text{(C)}", r"\boxed{\text{(C)}}"),
    # expressions
    (r"\frac{x+2}{7}", r"\boxed{\frac{x}{7}+\frac{2}{7}}"),
    ("x^2+2x+1", r"\boxed{(x+1)^2}"),
    (r"\sin^2 x + \cos^2 x", r"\boxed{1}"),
    ("p-q", r"\boxed{-(q-p)}"),
    # equations
    ("3", r"\boxed{x=3}"),
    ("x=3", r"\boxed{3}"),
    ("2x+4y-3=0", r"\boxed{y=-\frac{1}{2}x+\frac{3}{4}}"),
    # tuples, sets, intervals, matrices, several answers
    (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(3, \frac{\pi}{2})}"),
    ("(1,4.5)", r"\boxed{(1,\frac{9}{2})}"),
    (r"\{1,2\}", r"\boxed{2, 1}"),
    ("1, 2, 3", r"\boxed{3, 2, 1}"),
    ("1,2", r"\boxed{1}, \boxed{2}"),
    ("[0,1)", r"x \in [0, 1)"),
    ("(-\\infty, 0) \\cup (1, \\infty)", r"\boxed{(-\infty,0)\cup(1,\infty)}"),
    ("[2,5]", r"\boxed{[2, 5]}"),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\boxed{\begin{bmatrix}1&2\\3&4\end{bmatrix}}"),
    (r"\begin{pmatrix}1/2\\0\end{pmatrix}", r"\boxed{\begin{pmatrix}0.5\\0\end{pmatrix}}"),
    # whole responses
    ("27", "The final answer is $27$. I hope it is correct."),
    ("2", r"<think>the answer is 3</think> so \boxed{2}"),
    (r"\frac{1}{2}", r"$\frac{1}{2}$"),
]

# Pairs that must be judged wrong (or unparseable), never correct.
WRONG_PAIRS = [
    ("10", r"\boxed{1000}"),
    ("5", r"\boxed{500}"),                                   # no blanket x100 / /100 rescaling
    ("1234", r"\boxed{1235}"),
    ("10000", r"\boxed{10000.5}"),                           # an integer gold is not met by a close decimal
    ("0.001", r"\boxed{0.002}"),
    ("1e-7", r"\boxed{2e-7}"),                               # tiny decimals compare relatively
    (r"\frac{1}{2004!}", r"\boxed{\frac{1}{2006!}}"),        # tiny exact numbers compare exactly
    (r"\frac{1}{2^{99}}", r"\boxed{\frac{1}{2^{98}}}"),
    (r"1-\frac{1}{e}", r"\boxed{1+\frac{1}{e}}"),
    ("4", r"\boxed{4\sqrt{2}}"),
    (r"\sqrt{2}", r"\boxed{1.414}"),
    (r"\frac{x+2}{7}", r"\boxed{\frac{x}{7}+\frac{3}{7}}"),
    ("x", r"\boxed{|x|}"),
    ("x^2", r"\boxed{x^3}"),
    ("3x-y+13=0", r"\boxed{3x+4y+14=0}"),
    ("5x-7y+11z+4=0", r"\boxed{x+y-z+2=0}"),
    ("10, 4, 2", r"\boxed{4, 12, 2}"),
    ("(1,2)", r"\boxed{(2,1)}"),                             # tuples are ordered
    ("[0,1)", r"\boxed{(0,1)}"),                             # interval ends matter
    ("(0,9)", r"\boxed{[0,9)}"),
    ("[2,5]", r"\boxed{[2,5)}"),
    (r"\{1,2\}", r"\boxed{\{1,2,3\}}"),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\boxed{\begin{pmatrix}1&2\\4&3\end{pmatrix}}"),
    (r"\text{Evelyn}", r"\boxed{\text{Bob}}"),
    ("2x+z=1", r"\boxed{1}"),                                # only an assignment lhs is unwrapped
    ("2", r"\boxed{1} no no no no no no no \boxed{3}"),
    ("5", "I think it's 5 or maybe 6"),                      # no extractable answer
    ("5", "The calculation gives 5 apples in total and more"),
]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(2, CFG) as p:
        yield p


@pytest.fixture(scope="module")
def correct_verdicts(pool):
    return pool.check_batch([g for g, _ in CORRECT_PAIRS], [p for _, p in CORRECT_PAIRS])


@pytest.fixture(scope="module")
def wrong_verdicts(pool):
    return pool.check_batch([g for g, _ in WRONG_PAIRS], [p for _, p in WRONG_PAIRS])


@pytest.mark.parametrize("i", range(len(CORRECT_PAIRS)), ids=[repr(p) for p in CORRECT_PAIRS])
def test_correct(i, correct_verdicts):
    v = correct_verdicts[i]
    assert v.status == "correct", (CORRECT_PAIRS[i], v)


@pytest.mark.parametrize("i", range(len(WRONG_PAIRS)), ids=[repr(p) for p in WRONG_PAIRS])
def test_wrong(i, wrong_verdicts):
    v = wrong_verdicts[i]
    assert v.status in ("wrong", "no_answer", "parse_error"), (WRONG_PAIRS[i], v)


def test_sympy_path_without_string_shortcut(pool):
    # With the string fast path off, identical answers must still be equal through parsing.
    cfg = CFG.replace(string_match=False)
    golds = [r"\frac{1}{2}", "(1,2)", r"\{3,4\}", "[0,1)", "x^2-1", "y=2x", r"\begin{pmatrix}1\\2\end{pmatrix}"]
    verdicts = pool.check_batch(golds, [rf"\boxed{{{g}}}" for g in golds], config=cfg)
    assert [v.status for v in verdicts] == ["correct"] * len(golds), verdicts


def test_verdict_reasons(pool):
    assert pool.check("3", "nothing to see").status == "no_answer"
    v = pool.check("3", r"\boxed{4}")
    assert v.status == "wrong" and v.answer == "4" and v.gold == "3" and v.reason
    assert pool.check("", r"\boxed{4}").status == "parse_error"
    assert pool.check(None, r"\boxed{4}").status == "parse_error"
    assert pool.check("3", None).status == "no_answer"
    assert pool.check(r"\frac{1}{2}", r"\boxed{\frac{1}{2}").status == "no_answer"   # unclosed box
    v = pool.check("3", r"\boxed{" + "x" * 5000 + "}")
    assert v.status in ("no_answer", "parse_error")


def test_think_and_fallback_options(pool):
    text = r"<think>\boxed{3}</think> I am done here."
    assert pool.check("3", text).status == "correct"
    assert pool.check("3", text, CFG.replace(require_think_close=True)).status == "no_answer"
    stray = "we tried 2 and then 3 of them"
    assert pool.check("3", stray).status == "no_answer"
    assert pool.check("3", stray, CFG.replace(last_number_fallback=True)).status == "correct"
