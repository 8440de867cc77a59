"""The demo end to end at a reduced size: every stage runs, REPORT.md holds numbers for every method, plots exist."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

from exploresft_jax.data import word_problems as wp
from exploresft_jax.rewards import check_batch

ROOT = Path(__file__).resolve().parents[2]


def test_word_problem_styles_verify_and_buggy_solutions_fail():
    probs = wp.problems(40, seed=3)
    assert len({p["prompt"] for p in probs}) == 40
    teacher = wp.teacher_solutions(probs)
    assert {r["style"] for r in teacher} == set(wp.STYLES) and len(teacher) > 2.5 * len(probs)
    assert all(wp.style_of(r["response"]) == r["style"] for r in teacher)
    verdicts = check_batch([r["answer"] for r in teacher], [r["response"] for r in teacher])
    assert all(v.status == "correct" for v in verdicts)
    # the dropped-carry bug gives a wrong boxed value whenever a carry or borrow happens
    text, value = wp.solve(57, [("+", 6), ("+", 8)], "direct", buggy=True)
    assert text == "57 + 6 = 53. 53 + 8 = 51. The answer is \\boxed{51}." and value == 51
    assert wp.solve(57, [("+", 6), ("+", 8)], "columns")[1] == wp.solve(57, [("+", 6), ("+", 8)], "split")[1] == 71
    assert wp.solve(62, [("-", 8), ("+", 5)], "direct", buggy=True)[0].startswith("62 - 8 = 66.")
    base = wp.base_corpus(400, seed=1, bug_rate=0.3)
    styles = [r["style"] for r in base]
    assert styles.count("direct") + styles.count("direct-buggy") > 0.7 * len(base)  # the common style
    assert 0 < styles.count("columns") < 0.15 * len(base)  # a rare one
    assert 0.15 < styles.count("direct-buggy") / len(base) < 0.4
    held = wp.problems(10, seed=9, exclude={p["prompt"] for p in probs})
    assert not {p["prompt"] for p in held} & {p["prompt"] for p in probs}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    main = runpy.run_path(str(ROOT / "scripts" / "demo.py"))["main"]
    assert main(["--quick", "--workdir", str(work), "--seeds", "0"]) == 0
    return work


def test_quick_demo_writes_report_table_and_plots(quick_demo):
    work = quick_demo
    report = (work / "REPORT.md").read_text()
    for png in ("passk.png", "entropy.png", "ppl_hist.png"):
        assert (work / png).stat().st_size > 5000, png
        assert f"]({png})" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and "Pass@" not in line]
    table = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 7 and cells[1] in ("pretrained", "fine-tuned", "+ GRPO"):
            table[(cells[0], cells[1])] = cells[2:]
    expected = {("base model", "pretrained")}
    for label in ("SFT (random data)", "OXA", "CurioSFT", "SFT + entropy reg."):
        expected |= {(label, "fine-tuned"), (label, "+ GRPO")}
    assert set(table) == expected
    for key, cells in table.items():
        for c in cells:
            assert re.fullmatch(r"-?\d+(\.\d+)?", c), (key, c)  # a number, no nan, in every column
        assert 0 <= float(cells[0]) <= float(cells[2]) <= 100  # Pass@1 <= Pass@k_max


def test_quick_demo_results_are_consistent(quick_demo):
    res = json.loads((quick_demo / "results.json").read_text())
    assert set(res["runs"]) == {f"{m}/seed0" for m in ("sft", "oxa", "curio", "entropy_reg")}
    oxa = [json.loads(line) for line in (quick_demo / "select" / "oxa.jsonl").read_text().splitlines()]
    assert {r["loss_type"] for r in oxa} == {"ce", "ul"}  # positives and the base model's own wrong answers
    assert all(r["teacher_correct"] for r in oxa if r["loss_type"] == "ce")
    assert not any(r["teacher_correct"] for r in oxa if r["loss_type"] == "ul")
    # OXA's selection leans toward the solutions the base model finds unlikely
    sel = res["selection"]
    assert sel["oxa_positives"]["ppl_mean"] > sel["teacher"]["ppl_mean"]
    for key, entry in res["runs"].items():
        rows = [json.loads(line) for line in Path(entry["train_metrics"]).read_text().splitlines()]
        assert rows[-1]["step"] == res["settings"]["ft_steps"], key
        assert entry["sft"]["entropy"] > 0 and entry["grpo"]["entropy"] > 0
