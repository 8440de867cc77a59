"""The verifier never hangs and never raises: pathological inputs, threads, batches, public API."""

import threading
import time

import pytest

from exploresft_jax.rewards import (
    Verdict,
    VerifierConfig,
    VerifierPool,
    check,
    check_batch,
    math_reward,
    math_rewards,
    verify,
)

TIMEOUT = 1.0
CFG = VerifierConfig(timeout=TIMEOUT)
DEFINITE = {"correct", "wrong", "no_answer", "parse_error", "timeout"}

PATHOLOGICAL = [
    r"\boxed{2^{2^{2^{2^{2^{30}}}}}}",                                    # huge power tower
    r"\boxed{9^{9^{9^{9}}}}",
    r"\boxed{10^{10^{10^{10}}} - 10^{10^{10^{10}}} + 1}",
    r"\boxed{(10^{10^{8}})!}",
    r"\boxed{" + "{" * 50000 + "1" + "}" * 50000 + "}",                    # deeply nested braces
    r"\boxed{" + "(" * 300 + "1" + ")" * 300 + "}",
    r"\boxed{" + r"\sqrt{" * 400 + "2" + "}" * 400 + "}",
    "x" * 1_000_000 + r" \boxed{3}",                                         # megabyte string
    "9" * 1_000_000,
    r"\boxed{" + "1+" * 100000 + "1}",
    r"\boxed{" * 100000,
    "$" * 100000,
    r"\frac" * 50000,
    "\x00\ud800\uffff weird \\",
    r"\boxed{\int_0^\infty e^{-x^{x^{x}}} dx}",
    r"\boxed{\begin{pmatrix}" + "&".join(["1"] * 3000) + r"\end{pmatrix}}",
]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(2, CFG) as p:
        p.start()
        yield p


def test_pathological_inputs_return(pool):
    start = time.monotonic()
    verdicts = pool.check_batch(["3"] * len(PATHOLOGICAL), PATHOLOGICAL)
    elapsed = time.monotonic() - start
    assert len(verdicts) == len(PATHOLOGICAL)
    assert all(isinstance(v, Verdict) and v.status in DEFINITE for v in verdicts)
    assert verdicts[7].status == "correct"  # the megabyte string still has its answer
    # A bound on the timeout mechanism, not a speed claim: each item costs at most timeout + grace (plus
    # a worker restart after a kill), spread over two workers.
    per_item = TIMEOUT + CFG.grace + 30.0
    assert elapsed < per_item * len(PATHOLOGICAL)


def test_pathological_gold(pool):
    v = pool.check(r"2^{2^{2^{2^{2^{30}}}}}", r"\boxed{2^{2^{2^{2^{2^{30}}}}}}", CFG.replace(string_match=False))
    assert v.status in ("timeout", "correct", "parse_error")


def test_hard_kill_recovers(pool):
    # A computation the worker cannot interrupt itself (C-level big-integer power) is killed by the parent;
    # the pool restarts the worker and keeps answering, in order.
    before = pool.restarts
    golds = ["1", "2", "3", "4"]
    preds = [r"\boxed{1}", r"\boxed{2^{2^{2^{2^{2^{30}}}}}}", r"\boxed{3}", r"\boxed{5}"]
    verdicts = pool.check_batch(golds, preds, config=CFG.replace(string_match=False))
    assert [v.status for v in verdicts][0] == "correct"
    assert verdicts[1].status in ("timeout", "parse_error", "wrong")
    assert [v.status for v in verdicts][2:] == ["correct", "wrong"]
    assert pool.restarts >= before
    assert pool.check("7", r"\boxed{7}").status == "correct"


def test_batch_keeps_order_and_shared_gold(pool):
    preds = [rf"\boxed{{{i}}}" for i in range(40)]
    verdicts = pool.check_batch([str(i) for i in range(40)], preds)
    assert [v.answer for v in verdicts] == [str(i) for i in range(40)]
    assert all(v.correct for v in verdicts)
    shared = pool.check_batch("5", [r"\boxed{5}", r"\boxed{6}", "no answer here"])
    assert [v.status for v in shared] == ["correct", "wrong", "no_answer"]
    with pytest.raises(ValueError):
        pool.check_batch(["1", "2"], ["1"])
    assert pool.check_batch([], []) == []


def test_works_from_threads(pool):
    results = {}

    def work(i):
        results[i] = pool.check(str(i), rf"\boxed{{{i}}}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i].correct for i in range(4))


def test_public_api():
    assert verify("1/2", r"\boxed{0.5}") is True
    assert verify("3", "4") is False
    assert math_reward("3", r"so \boxed{3}") == 1.0
    assert math_reward("3", r"so \boxed{4}") == 0.0
    v = check("3", r"\boxed{4}", timeout=2.0)
    assert v.status == "wrong" and v.reward == 0.0
    assert [v.status for v in check_batch(["1", "2"], [r"\boxed{1}", "no idea at all"])] == ["correct", "no_answer"]
    assert math_rewards("2", [r"\boxed{2}", r"\boxed{3}"]) == [1.0, 0.0]
    out = []
    t = threading.Thread(target=lambda: out.append(verify("5", r"\boxed{5}", timeout=2.0)))
    t.start()
    t.join()
    assert out == [True]


@pytest.mark.parametrize("junk", ["", " ", "\\", "{", "}", "$$", "\\boxed", "\\boxed{}", "\\frac{", "^^^",
                                  "\\begin{pmatrix}", "\\left(", "∞", "1/0", "0/0", "\\infty - \\infty"])
def test_junk_never_raises(pool, junk):
    assert pool.check("1", junk).status in DEFINITE
    assert pool.check(junk, r"\boxed{1}").status in DEFINITE


def test_a_worker_whose_item_was_interrupted_is_replaced():
    """A timer that cuts into a parse can leave the LaTeX grammar's state broken for every later parse in that
    process (under load, a whole batch judged parse_error), so a worker whose item was interrupted by a timer (its
    symbolic budget here) is replaced, and the items after it are judged by a sound one."""
    with VerifierPool(1, CFG) as pool:
        before = pool.restarts
        # equal series whose numeric estimates agree: the symbolic evaluation runs past the 0.5 s budget
        first = pool.check_batch([r"\sum_{n=1}^{\infty} \frac{1}{n^3+n}"],
                                 [r"\boxed{\sum_{n=1}^{\infty} \frac{1}{n(n^2+1)}}"])
        assert first[0].status in ("parse_error", "timeout"), first[0]
        assert pool.restarts == before + 1
        plain = pool.check_batch(["2"], [r"\boxed{2}"])  # nothing interrupted: the worker is kept
        assert plain[0].status == "correct" and pool.restarts == before + 1
        after = pool.check_batch([r"x \geq 4", "(a+b)^2", r"\frac{\sqrt{3}}{2}"],
                                 [r"\boxed{4 \leq x}", r"\boxed{a^2+2ab+b^2}", r"\boxed{\sqrt{3}/2}"])
        assert [v.status for v in after] == ["correct"] * 3
