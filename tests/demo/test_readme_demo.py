"""README's demo section is the one `scripts/demo.py --readme` writes from the published run (docs/demo/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exploresft_jax.demo import claims, report

ROOT = Path(__file__).resolve().parents[2]


def _assert_images_exist(markdown: str, base: Path) -> None:
    for line in markdown.splitlines():
        if line.startswith("!["):
            assert (base / line.split("](", 1)[1].rstrip(")")).is_file(), line


def _assert_verdicts_follow_the_rule(results: dict) -> None:
    # the published verdicts are the rule's, recomputed from the per-seed values they quote
    for c in results["claims"]:
        if c["verdict"] in ("not run", "untestable"):
            continue
        assert claims.verdict(c["a_per_seed"], c["b_per_seed"], c["direction"])[1] == c["verdict"], c["claim"]


def test_readme_demo_section_is_generated_from_the_published_results():
    results = json.loads((ROOT / "docs" / "demo" / "results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    section = report.readme_section(results)
    assert section in readme
    _assert_images_exist(section, ROOT)
    _assert_verdicts_follow_the_rule(results)
    assert results["eval"]["problems"] >= 128 and results["eval"]["temperature"] == 0.6
    assert len(results["seeds"]) >= 3


def test_published_full_run_has_every_claim_judged_by_the_rule():
    # docs/demo/full: the --full run (5 seeds, GRPO from every start), linked from README with its time
    full = ROOT / "docs" / "demo" / "full"
    results = json.loads((full / "results.json").read_text())
    assert results["settings"]["grpo"] and len(results["seeds"]) >= 5 and results["eval"]["problems"] >= 384
    assert {c["stage"] for c in results["claims"]} == {"fine-tuned", "grpo"}
    report_md = (full / "REPORT.md").read_text()
    for c in results["claims"]:
        assert c["verdict"] != "not run", c["claim"]  # --full measures every claim
        assert f"**{c['verdict']}**" in report_md
    _assert_verdicts_follow_the_rule(results)
    _assert_images_exist(report_md, full)
    assert "docs/demo/full/REPORT.md" in (ROOT / "README.md").read_text()


def test_readme_section_replacement_needs_both_markers():
    text = f"intro\n{report.README_START}\nold\n{report.README_END}\noutro\n"
    assert report.replace_readme_section(text, "NEW") == "intro\nNEW\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        report.replace_readme_section("no markers here", "NEW")
