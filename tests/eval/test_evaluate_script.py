"""scripts/evaluate.py scores a generations JSONL and writes the table, plot and per-sample verdicts."""

import importlib.util
import json
from pathlib import Path

import pytest

from exploresft_jax.eval import runner

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK_FIXTURE = ROOT / "tests" / "data" / "benchmarks"


def _comp(text, tokens=100, entropy=None):
    c = {"text": text, "num_tokens": tokens, "logprob": -0.5 * tokens, "finish_reason": "stop"}
    if entropy is not None:
        c["entropy"] = entropy
    return c


def test_scores_generations(tmp_path, evaluate):
    bench = BENCHMARK_FIXTURE
    aime = [json.loads(line) for line in (bench / "aime24" / "test.jsonl").open()][:3]
    minerva = [json.loads(line) for line in (bench / "minerva_math" / "test.jsonl").open()][:2]
    gens = tmp_path / "gens.jsonl"
    with open(gens, "w") as f:
        # aime24: problem 0 right 2/4, problem 1 right 0/4 (one no-answer), problem 2 right 4/4
        answers = [r["answer"] for r in aime]
        plans = [[True, False, True, False], [False, False, None, False], [True] * 4]
        for rec, gold, plan in zip(aime, answers, plans):
            comps = [_comp(f"so \\boxed{{{gold}}}" if ok else ("no idea at all" if ok is None else r"\boxed{-5}"),
                           tokens=100, entropy=0.5) for ok in plan]
            f.write(json.dumps({**rec, "benchmark": "aime24", "completions": comps}) + "\n")
        # minerva_math: gold comes from the solution's last \boxed{}; 1/2 and 2/2 right
        for rec, plan in zip(minerva, [[True, False], [True, True]]):
            sol = rec["solution"]
            gold = sol[sol.rindex("\\boxed{") + 7:]
            depth, end = 1, 0
            for end, ch in enumerate(gold):
                depth += ch == "{"
                depth -= ch == "}"
                if depth == 0:
                    break
            gold = gold[:end]
            comps = [_comp(f"The final answer is \\boxed{{{gold}}}" if ok else r"\boxed{10^{99}}", tokens=50)
                     for ok in plan]
            f.write(json.dumps({**rec, "benchmark": "minerva_math", "completions": comps}) + "\n")
    out = tmp_path / "out"
    rc = evaluate.main(["--generations", str(gens), "--output-dir", str(out), "--workers", "2", "--timeout", "5",
                        "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    a = res["benchmarks"]["aime24"]
    assert a["problems"] == 3 and a["n"] == 4
    assert a["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert a["pass@k"]["2"] == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert a["pass@k"]["4"] == pytest.approx(2 / 3) and a["any_correct@n"] == pytest.approx(2 / 3)
    assert a["no_answer_rate"] == pytest.approx(1 / 12)
    assert a["mean_response_tokens"] == pytest.approx(100) and a["mean_entropy"] == pytest.approx(0.5)
    assert a["mean_token_nll"] == pytest.approx(0.5)
    m = res["benchmarks"]["minerva_math"]
    assert m["pass@1"] == pytest.approx(0.75) and m["mean_entropy"] is None
    assert res["average"]["pass@1"] == pytest.approx((a["pass@1"] + m["pass@1"]) / 2)
    assert set(res["average"]["pass@k"]) == {"1", "2"}
    md = (out / "results.md").read_text()
    assert "| aime24 |" in md and "**average**" in md and "Pass@4" in md
    assert (out / "pass_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = [json.loads(line) for line in (out / "samples.jsonl").open()]
    assert len(samples) == 12 + 4
    assert {s["status"] for s in samples} <= {"correct", "wrong", "no_answer"}


@pytest.mark.parametrize("content,needle", [
    ('{"answer": "1", "completions": 5}\n', "gens.jsonl:1: field 'completions'"),
    ('{"answer": "1", "completions": [{"text": "1"}]}\n{oops\n', "gens.jsonl:2: invalid JSON"),
    ('{"completions": [{"text": "1"}]}\n', "gens.jsonl:1: field 'answer'"),
    ('{"answer": "1", "completions": [{"text": 3}]}\n', "completions[0].text"),
    ('{"answer": "1", "completions": [{"text": "1", "finish_reason": "eos"}]}\n', "finish_reason"),
])
def test_bad_generations_fail_with_one_line(tmp_path, evaluate, capsys, content, needle):
    gens = tmp_path / "gens.jsonl"
    gens.write_text(content)
    rc = evaluate.main(["--generations", str(gens), "--output-dir", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0] and err[0].startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_model_without_sampler_fails_clearly(evaluate, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "exploresft_jax.sampling" else real(name, *a))
    args = evaluate.parse_args(["--model", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--benchmarks",
                                "aime24", "--data-dir", str(BENCHMARK_FIXTURE), "--limit", "1"])
    assert (args.temperature, args.top_p) == (0.6, 0.95)
    with pytest.raises(runner.InputError, match="needs the sampler module"):
        runner.evaluate(**vars(args))
    assert not (tmp_path / "o").exists()
