"""scripts/evaluate.py --extraction: the answer-extraction mode is applied and recorded in results.json/.md."""

import json

import pytest


@pytest.mark.parametrize("mode,pass1", [("permissive", 1.0), ("boxed_only", 0.5), (None, 1.0)])
def test_extraction_flag(tmp_path, evaluate, mode, pass1):
    gens = tmp_path / "gens.jsonl"
    comps = [{"text": r"so \boxed{12}"}, {"text": "Adding up, we get\nthe total 12."}]
    gens.write_text(json.dumps({"answer": "12", "benchmark": "toy", "completions": comps}) + "\n")
    out = tmp_path / "out"
    argv = ["--generations", str(gens), "--output-dir", str(out), "--workers", "1", "--no-progress"]
    if mode:
        argv += ["--extraction", mode]
    assert evaluate.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["extraction"] == (mode or "permissive")
    assert res["benchmarks"]["toy"]["pass@1"] == pytest.approx(pass1)
    assert f"extraction: `{mode or 'permissive'}`" in (out / "results.md").read_text()
