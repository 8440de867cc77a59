"""Loaders for the math evaluation benchmarks, each with its own field quirks.

Local layout: ``<data_dir>/<name>/test.jsonl`` (``data_dir`` may also be the folder holding ``benchmarks/``).
The default ``data_dir`` is ``$EXPLORESFT_BENCHMARKS``. :func:`download_benchmark` fetches a copy from the
HuggingFace Hub for users without the local files.

Gold answers:
- aime24 / aime25: ``answer`` (an integer string); amc23: ``answer`` (a float such as ``27.0``, written as ``27``);
- math500: ``answer`` (LaTeX);
- minerva_math: no answer field: the last ``\\boxed{}`` of ``solution``;
- olympiadbench: ``final_answer`` (a list of one ``$...$`` string; every ``$`` is removed, since multi-part
  answers read ``$69$,$84$``);
- gsm8k: the text after ``####`` in ``answer``, thousands commas removed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from exploresft_jax.data.jsonl import RecordError, iter_jsonl

__all__ = ["BENCHMARKS", "BenchmarkError", "BenchmarkProblem", "load_benchmark", "load_benchmarks",
           "problem_from_record", "download_benchmark", "default_data_dir", "HUB_SOURCES"]

BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k")
# The six most often reported (without gsm8k), in the usual order.
SIX_BENCHMARKS = BENCHMARKS[:6]


class BenchmarkError(ValueError):
    """A benchmark file or record is unusable; the message names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class BenchmarkProblem:
    """One evaluation problem.

    Attributes: benchmark (name), index (0-based line order), problem (question text), answer (gold answer
    string, ready for the verifier), record (the original JSON object, unchanged).
    """

    benchmark: str
    index: int
    problem: str
    answer: str
    record: dict = dataclasses.field(repr=False, compare=False)

    def to_prompt_record(self) -> dict:
        """The ``{"prompt", "answer"}`` record of the RL/evaluation data format, with the benchmark and index."""
        return {"prompt": self.problem, "answer": self.answer, "benchmark": self.benchmark, "index": self.index}


def _first(record: dict, fields: tuple[str, ...]):
    for f in fields:
        v = record.get(f)
        if v is not None and v != "" and v != []:
            return f, v
    return None, None


def _number_string(v) -> str:
    if isinstance(v, bool):
        raise TypeError("boolean answer")
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v).strip()


def _gold(name: str, record: dict) -> tuple[str, str]:
    """(gold answer, field it came from) for a record of benchmark ``name``; raises KeyError/TypeError."""
    from ..rewards.extract import last_boxed

    if name == "minerva_math":
        field, sol = _first(record, ("solution",))
        if sol is not None:
            boxed = last_boxed(str(sol))
            if boxed:
                return boxed.strip(), "solution"
        # Hub copies carry an "answer" field instead.
        field, ans = _first(record, ("answer",))
        if ans is None:
            raise KeyError("solution (no \\boxed{} answer)")
        return _number_string(ans), field
    if name == "olympiadbench":
        field, fa = _first(record, ("final_answer", "answer"))
        if fa is None:
            raise KeyError("final_answer")
        parts = fa if isinstance(fa, list) else [fa]
        text = ", ".join(_number_string(p).replace("\\$", "\0").replace("$", "").replace("\0", "\\$").strip()
                         for p in parts if str(p).strip())
        return text.strip().rstrip("."), field
    if name == "gsm8k":
        field, ans = _first(record, ("answer",))
        if ans is None:
            raise KeyError("answer")
        ans = str(ans)
        if "####" in ans:
            ans = ans.rsplit("####", 1)[1]
        return ans.strip().replace(",", ""), field
    field, ans = _first(record, ("answer",))
    if ans is None:
        raise KeyError("answer")
    return _number_string(ans), field


def problem_from_record(name: str, record: dict, index: int = 0, where: str = "<record>") -> BenchmarkProblem:
    """Build a :class:`BenchmarkProblem` from one raw record of benchmark ``name``.

    Raises :class:`BenchmarkError` (naming ``where``, e.g. ``file:line``, and the field) when the question or the
    gold answer is missing or empty.
    """
    if not isinstance(record, dict):
        raise BenchmarkError(f"{where}: expected a JSON object, got {type(record).__name__}")
    _, question = _first(record, ("problem", "question", "prompt"))
    if not isinstance(question, str) or not question.strip():
        raise BenchmarkError(f"{where}: no question text (fields 'problem'/'question')")
    try:
        gold, _ = _gold(name, record)
    except (KeyError, TypeError) as e:
        raise BenchmarkError(f"{where}: missing or bad gold answer field {e}") from None
    if not gold:
        raise BenchmarkError(f"{where}: empty gold answer")
    return BenchmarkProblem(name, index, question, gold, record)


def default_data_dir() -> Path | None:
    env = os.environ.get("EXPLORESFT_BENCHMARKS")
    return Path(env) if env else None


def _benchmark_file(name: str, data_dir: str | os.PathLike | None) -> Path:
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    if base is None:
        raise BenchmarkError(f"{name}: no data directory given (pass data_dir or set EXPLORESFT_BENCHMARKS)")
    for cand in (base / name / "test.jsonl", base / "benchmarks" / name / "test.jsonl", base / f"{name}.jsonl"):
        if cand.is_file():
            return cand
    raise BenchmarkError(f"{name}: {base / name / 'test.jsonl'} not found")


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, *, limit: int | None = None
                   ) -> list[BenchmarkProblem]:
    """Load benchmark ``name`` (one of :data:`BENCHMARKS`) from ``data_dir``.

    Returns the problems in file order. Raises :class:`BenchmarkError` naming the file and line of the first bad
    record (invalid JSON, no question, no gold answer).
    """
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    path = _benchmark_file(name, data_dir)
    problems: list[BenchmarkProblem] = []
    try:
        for lineno, record in iter_jsonl(path):
            problems.append(problem_from_record(name, record, len(problems), f"{path}:{lineno}"))
            if limit is not None and len(problems) >= limit:
                break
    except RecordError as e:
        raise BenchmarkError(str(e)) from None
    if not problems:
        raise BenchmarkError(f"{path}: no problems")
    return problems


def load_benchmarks(names, data_dir=None, *, limit: int | None = None) -> dict[str, list[BenchmarkProblem]]:
    """``{name: problems}`` for several benchmarks (see :func:`load_benchmark`)."""
    return {n: load_benchmark(n, data_dir, limit=limit) for n in names}


# HuggingFace Hub copies: (dataset id, config, split). Their field names differ from the local files; the
# record-to-problem mapping above accepts both ("problem"/"question", "answer"/"final_answer"/"solution").
HUB_SOURCES = {
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": ("math-ai/aime25", None, "test"),
    "amc23": ("math-ai/amc23", None, "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "minerva_math": ("math-ai/minervamath", None, "test"),
    "olympiadbench": ("math-ai/olympiadbench", None, "test"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
}


def download_benchmark(name: str, data_dir: str | os.PathLike) -> Path:
    """Download benchmark ``name`` from the HuggingFace Hub into ``<data_dir>/<name>/test.jsonl``.

    Needs the ``datasets`` package and network access. Every record is checked with
    :func:`problem_from_record` before the file is written, so a changed upstream schema fails loudly.
    Returns the written path.
    """
    if name not in HUB_SOURCES:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(HUB_SOURCES)}")
    try:
        import datasets
    except ImportError as e:
        raise BenchmarkError("downloading benchmarks needs the 'datasets' package (pip install datasets)") from e
    repo, config, split = HUB_SOURCES[name]
    ds = datasets.load_dataset(repo, config, split=split)
    records = [dict(r) for r in ds]
    for i, r in enumerate(records):
        problem_from_record(name, r, i, f"{repo}[{split}][{i}]")
    out = Path(data_dir) / name / "test.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, out)
    return out
