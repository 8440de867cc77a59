"""Every benchmark loads with a gold answer per problem, and every gold verifies against itself."""

import json

import pytest

from exploresft_jax.eval import BENCHMARKS, BenchmarkError, load_benchmark, problem_from_record
from exploresft_jax.rewards import VerifierConfig, VerifierPool
from tests.conftest import benchmark_sources

SOURCES = benchmark_sources()
SIZES = {"fixture": dict.fromkeys(BENCHMARKS, 3),
         "full": {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva_math": 272, "olympiadbench": 675,
                  "gsm8k": 1319}}


@pytest.fixture(scope="module", params=sorted(SOURCES))
def source(request):
    folder = SOURCES[request.param]
    return request.param, folder, {name: load_benchmark(name, folder) for name in BENCHMARKS}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_loads_with_gold(source, name):
    kind, _, benchmarks = source
    problems = benchmarks[name]
    assert len(problems) == SIZES[kind][name]
    assert [p.index for p in problems] == list(range(len(problems)))
    for p in problems:
        assert isinstance(p.answer, str) and p.answer.strip(), (name, p.index)
        assert isinstance(p.problem, str) and p.problem.strip()
        assert "####" not in p.answer and "\\boxed" not in p.answer


def test_field_quirks_on_the_project_fixture():
    """Each source's own field conventions, on records written in those formats."""
    b = {name: load_benchmark(name, SOURCES["fixture"]) for name in BENCHMARKS}
    assert b["amc23"][0].answer == "3" and b["amc23"][1].answer == "0.75"   # floats 3.0 / 0.75 in the file
    assert b["amc23"][2].answer == "8"                                     # an int
    assert b["gsm8k"][0].answer == "2400"                                  # after ####, separator removed
    assert b["aime24"][1].answer == "024"                                  # a string answer is kept as written
    assert b["aime25"][0].problem.startswith("Find the sum")               # 'question' field
    assert b["math500"][0].answer == r"\left( \sqrt{2}, \frac{\pi}{4} \right)"
    assert b["minerva_math"][1].answer == "9"                              # the last \boxed{} of the solution
    assert b["olympiadbench"][0].answer == "1,2,3"                         # ["$1$,$2$,$3$"]
    assert b["olympiadbench"][2].answer == "32"                            # "$32$." loses its $ and full stop
    rec = b["aime24"][0].to_prompt_record()
    assert set(rec) >= {"prompt", "answer"} and rec["answer"] == b["aime24"][0].answer


if "full" in SOURCES:
    def test_field_quirks_on_the_full_sets():
        folder = SOURCES["full"]
        b = {name: load_benchmark(name, folder) for name in BENCHMARKS}
        assert b["amc23"][0].answer == "27"                       # float 27.0 in the file
        assert b["gsm8k"][0].answer == "18"                       # after ####
        assert all("," not in p.answer for p in b["gsm8k"])
        assert b["aime25"][0].answer == "70"
        assert b["math500"][0].answer == r"\left( 3, \frac{\pi}{2} \right)"
        assert all("$" not in p.answer.replace("\\$", "") for p in b["olympiadbench"])
        multi = [p for p in b["olympiadbench"] if p.record["final_answer"] == ["$69$,$84$"]]
        assert multi and multi[0].answer == "69,84"
        first = json.loads((folder / "minerva_math" / "test.jsonl").open().readline())
        assert b["minerva_math"][0].answer in first["solution"]


def test_every_gold_verifies_against_itself_boxed(source):
    golds = [p.answer for name in BENCHMARKS for p in source[2][name]]
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
