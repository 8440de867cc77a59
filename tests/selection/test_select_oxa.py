"""OXA selection: Gaussian bin targets, one response per query, longest first, negatives, the script."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
from scipy.stats import norm

from exploresft_jax.selection.oxa_select import gaussian_bin_targets, select_negatives, select_positives

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "select_oxa.py"


def test_bin_targets_follow_the_gaussian_and_sum_exactly():
    edges, counts = gaussian_bin_targets(50000, mu=2.5, sigma=0.25)
    assert len(edges) == 81 and counts.sum() == 50000 and np.isclose(edges[1] - edges[0], 0.05)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w = norm.pdf(centres, 2.5, 0.25)
    exact = 50000 * w / w.sum()
    assert np.all(np.abs(counts - exact) < 1)  # largest-remainder rounding moves no bin by a whole unit
    inside = counts[(centres > 2.0) & (centres < 3.0)].sum() / 50000
    assert 0.94 < inside < 0.97  # about 95% within mu +- 2 sigma


def test_positive_selection_rules():
    rng = np.random.default_rng(0)
    recs = []
    for q in range(400):
        for j in range(3):  # three responses per query
            recs.append({"prompt": f"q{q}", "response": "x", "ppl": float(rng.uniform(1.0, 5.0)),
                         "num_tokens": int(rng.integers(10, 1000))})
    chosen, rep = select_positives(recs, 200, mu=2.5, sigma=0.25, num_bins=80)
    assert len({r["prompt"] for r in chosen}) == len(chosen)  # one response per query
    assert rep.num_selected == len(chosen) == sum(rep.selected)
    assert all(s <= t for s, t in zip(rep.selected, rep.targets))
    assert rep.shortfall == 200 - len(chosen)
    # within each bin, what was taken is the longest among that bin's candidates whose query was still free
    edges = np.asarray(rep.edges)
    ppl = np.array([r["ppl"] for r in chosen])
    assert np.all((ppl >= 1.0) & (ppl <= 5.0)) and abs(np.mean(ppl) - 2.5) < 0.1
    b = 40  # a full bin near the centre
    in_bin = [r for r in chosen if edges[b] <= r["ppl"] < edges[b + 1]]
    cands = [r for r in recs if edges[b] <= r["ppl"] < edges[b + 1]]
    if len(in_bin) == rep.targets[b] and len(cands) > len(in_bin):
        assert min(r["num_tokens"] for r in in_bin) >= np.median([r["num_tokens"] for r in cands])


def test_negative_selection_rules():
    recs = [{"prompt": "a", "ppl": 1.1}, {"prompt": "a", "ppl": 1.5}, {"prompt": "a", "ppl": 1.3},
            {"prompt": "b", "ppl": 2.0}, {"prompt": "c", "ppl": 1.25}, {"prompt": "d", "ppl": 3.0}]
    got = select_negatives(recs, 3, ppl_floor=1.2)
    assert [(r["prompt"], r["ppl"]) for r in got] == [("c", 1.25), ("a", 1.3), ("b", 2.0)]


def test_script_writes_mixed_set_report_and_histogram(tmp_path):
    rng = np.random.default_rng(1)
    teacher = tmp_path / "teacher.jsonl"
    selfgen = tmp_path / "self.jsonl"
    with open(teacher, "w") as f:
        for q in range(300):
            f.write(json.dumps({"prompt": f"q{q}", "response": f"so \\boxed{{{q}}}", "answer": str(q),
                                "ppl": float(rng.normal(2.5, 0.6)), "num_tokens": 10}) + "\n")
        f.write(json.dumps({"prompt": "wrong", "response": "\\boxed{1}", "answer": "2", "ppl": 2.5}) + "\n")
    with open(selfgen, "w") as f:
        for q in range(50):
            f.write(json.dumps({"prompt": f"q{q}", "response": "\\boxed{-1}", "correct": q % 2 == 0,
                                "ppl": 1.0 + q / 10}) + "\n")
    out = tmp_path / "oxa.jsonl"
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main(["--teacher", str(teacher), "--self", str(selfgen), "--output", str(out), "--num-positives", "100",
                 "--num-negatives", "10"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pos = [r for r in rows if r["loss_type"] == "ce"]
    neg = [r for r in rows if r["loss_type"] == "ul"]
    assert 90 <= len(pos) <= 100 and all(r["prompt"] != "wrong" for r in pos)  # the unverified answer is out
    assert len(neg) == 10 and all(not r["correct"] for r in neg)
    assert [r["ppl"] for r in neg] == sorted(r["ppl"] for r in neg) and min(r["ppl"] for r in neg) >= 1.2
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["positives"] == len(pos) and report["shortfall"] == 100 - len(pos)
    assert out.with_suffix(".png").stat().st_size > 1000


def test_negatives_over_the_length_cap_are_dropped_before_the_per_query_choice():
    """The release keeps negatives of at most 25k tokens: a long lowest-PPL answer gives way to the query's
    next-lowest one within the cap; max_tokens=0 keeps every length."""
    recs = [{"prompt": "a", "ppl": 1.3, "num_tokens": 30000}, {"prompt": "a", "ppl": 1.5, "num_tokens": 900},
            {"prompt": "b", "ppl": 1.4, "num_tokens": 25000}, {"prompt": "c", "ppl": 1.25, "num_tokens": 25001}]
    got = select_negatives(recs, 10)
    assert [(r["prompt"], r["ppl"]) for r in got] == [("b", 1.4), ("a", 1.5)]
    assert len(select_negatives(recs, 10, max_tokens=0)) == 3
