"""Every benchmark loads with a gold answer per problem, and every gold verifies against itself."""

import json

import pytest

from exploresft_jax.eval import BENCHMARKS, BenchmarkError, load_benchmark, problem_from_record
from exploresft_jax.rewards import VerifierConfig, VerifierPool

SIZES = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva_math": 272, "olympiadbench": 675,
         "gsm8k": 1319}


@pytest.fixture(scope="module")
def benchmarks(shared_data):
    return {name: load_benchmark(name, shared_data / "benchmarks") for name in BENCHMARKS}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_loads_with_gold(benchmarks, name):
    problems = benchmarks[name]
    assert len(problems) == SIZES[name]
    assert [p.index for p in problems] == list(range(len(problems)))
    for p in problems:
        assert isinstance(p.answer, str) and p.answer.strip(), (name, p.index)
        assert isinstance(p.problem, str) and p.problem.strip()
        assert "####" not in p.answer and "\\boxed" not in p.answer


def test_field_quirks(benchmarks, shared_data):
    assert benchmarks["amc23"][0].answer == "27"                       # float 27.0 in the file
    assert benchmarks["gsm8k"][0].answer == "18"                       # after ####
    assert all("," not in p.answer for p in benchmarks["gsm8k"])
    assert benchmarks["aime25"][0].answer == "70"
    assert benchmarks["math500"][0].answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert all("$" not in p.answer.replace("\\$", "") for p in benchmarks["olympiadbench"])
    multi = [p for p in benchmarks["olympiadbench"] if p.record["final_answer"] == ["$69$,$84$"]]
    assert multi and multi[0].answer == "69,84"
    # minerva: the last \boxed{} of the solution
    first = json.loads((shared_data / "benchmarks" / "minerva_math" / "test.jsonl").open().readline())
    assert benchmarks["minerva_math"][0].answer in first["solution"]
    rec = benchmarks["aime24"][0].to_prompt_record()
    assert set(rec) >= {"prompt", "answer"} and rec["answer"] == benchmarks["aime24"][0].answer


def test_every_gold_verifies_against_itself_boxed(benchmarks):
    golds = [p.answer for name in BENCHMARKS for p in benchmarks[name]]
    with VerifierPool(2, VerifierConfig(timeout=10.0)) as pool:
        verdicts = pool.check_batch(golds, [f"The answer is $\\boxed{{{g}}}$." for g in golds])
    failures = [(g, v.status, v.reason) for g, v in zip(golds, verdicts) if not v.correct]
    assert not failures, failures[:10]


def test_bad_files_name_file_and_line(tmp_path):
    d = tmp_path / "aime24"
    d.mkdir()
    (d / "test.jsonl").write_text('{"problem": "p", "answer": "1"}\n{not json\n')
    with pytest.raises(BenchmarkError, match=r"test\.jsonl:2: invalid JSON"):
        load_benchmark("aime24", tmp_path)
    (d / "test.jsonl").write_text('{"problem": "p", "answer": "1"}\n{"problem": "q"}\n')
    with pytest.raises(BenchmarkError, match=r"test\.jsonl:2: .*answer"):
        load_benchmark("aime24", tmp_path)
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark("gsm8k", tmp_path)
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_benchmark("nope", tmp_path)
    with pytest.raises(BenchmarkError, match="solution"):
        problem_from_record("minerva_math", {"problem": "p", "solution": "no box"})
    assert problem_from_record("olympiadbench", {"question": "q", "final_answer": ["$[\\frac{1}{2}, 8]$"]}
                               ).answer == "[\\frac{1}{2}, 8]"
