"""The demo's verdict rule: Welch's t test against float64 NumPy references, and every verdict it can give."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exploresft_jax.demo import claims as cl


def _t_cdf(x: float, df: float) -> float:
    """Student's t CDF by integrating its density in float64 (trapezoid on a fine grid; independent of scipy)."""
    grid = np.linspace(0.0, abs(x), 200_001)
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    dens = np.exp(logc - (df + 1) / 2 * np.log1p(grid ** 2 / df))
    half = float(np.sum((dens[1:] + dens[:-1]) / 2 * np.diff(grid)))
    return 0.5 + math.copysign(half, x)


@pytest.mark.parametrize("df,table", [(2, 4.302653), (4, 2.776445), (10, 2.228139), (30, 2.042272)])
def test_critical_values_match_the_t_table(df, table):
    assert cl.t_quantile(0.975, df) == pytest.approx(table, abs=2e-6)


def test_welch_matches_a_float64_reference():
    a = np.array([0.612, 0.587, 0.634])
    b = np.array([0.541, 0.529, 0.566, 0.550])
    w = cl.welch(a, b)
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    assert w["difference"] == pytest.approx(a.mean() - b.mean(), abs=1e-15)
    assert w["se"] == pytest.approx(math.sqrt(va + vb), rel=1e-13)
    assert w["df"] == pytest.approx(df, rel=1e-12)
    # t* is the 97.5% point of t at that (non-integer) df, the detectable difference (t* + t_0.80) se
    assert _t_cdf(w["critical_value"], df) == pytest.approx(0.975, abs=1e-7)
    t80 = cl.t_quantile(0.8, df)
    assert _t_cdf(t80, df) == pytest.approx(0.8, abs=1e-7)
    assert w["detectable"] == pytest.approx((w["critical_value"] + t80) * w["se"], rel=1e-12)


def test_verdicts_follow_the_rule_in_both_directions():
    hi, lo = [0.50, 0.52, 0.54], [0.40, 0.41, 0.42]
    w, v = cl.verdict(hi, lo)
    assert v == "reproduced" and w["difference"] == pytest.approx(0.11)
    assert cl.verdict(hi, lo, "lower")[1] == "not reproduced"
    assert cl.verdict(lo, hi, "lower")[1] == "reproduced"
    # 2 standard errors is not enough at 2-4 degrees of freedom: t* is 2.78-4.30
    a, b = [0.50, 0.56, 0.53], [0.48, 0.50, 0.49]
    w, v = cl.verdict(a, b)
    assert 2 * w["se"] < w["difference"] < w["critical_value"] * w["se"] and v == "within noise"
    assert cl.verdict([0.5], [0.4])[1] == "undetermined"
    assert cl.verdict([0.5, 0.5], [0.4, 0.4])[1] == "reproduced"  # no spread: the difference is exact
    assert cl.verdict([0.5, 0.5], [0.5, 0.5])[1] == "within noise"
    with pytest.raises(ValueError, match="direction"):
        cl.verdict(a, b, "more")


def test_judge_marks_untestable_not_run_and_saturated_claims():
    claims = (cl.Claim("P", "a beats b", "pass@1", "fine-tuned", "x", "y", gate="g"),
              cl.Claim("P", "a beats b at k", "pass@k", "fine-tuned", "x", "y"),
              cl.Claim("P", "after RL", "pass@1", "grpo", "x", "y"),
              cl.Claim("P", "entropy", "entropy_tf.result", "fine-tuned", "x", "y", direction="lower"))
    values = {("x", "fine-tuned", "pass@1"): [0.6, 0.62, 0.61], ("y", "fine-tuned", "pass@1"): [0.5, 0.52, 0.51],
              ("x", "fine-tuned", "pass@4"): [0.99, 0.985, 0.99], ("y", "fine-tuned", "pass@4"): [0.98, 0.981, 0.982],
              ("x", "fine-tuned", "entropy_tf.result"): [0.1, 0.11, 0.12],
              ("y", "fine-tuned", "entropy_tf.result"): [0.3, 0.31, 0.32]}
    per_seed = lambda a, st, m: values.get((a, st, m))  # noqa: E731
    met = cl.judge(claims, per_seed, {"g": cl.gate(0.08, 0.05)}, k=4)
    assert [r["verdict"] for r in met] == ["reproduced", "untestable", "not run", "reproduced"]
    assert met[1]["metric"] == "pass@4" and met[1]["difference"] > 0  # measured, saturated
    failed = cl.judge(claims, per_seed, {"g": cl.gate(0.01, 0.05)}, k=4)
    assert failed[0]["verdict"] == "untestable" and failed[0]["difference"] == pytest.approx(0.1)
    row = met[0]
    for field in ("paper", "claim", "metric", "stage", "a", "b", "direction", "a_per_seed", "b_per_seed",
                  "difference", "se", "critical_value", "verdict", "gate"):
        assert field in row
    assert cl.gate(None, 0.1) == {"value": None, "required": ">= 0.1", "met": False}
    assert cl.gate(0.95, 0.9, at_least=False)["met"] is False


def test_every_claim_names_a_known_gate_and_arms():
    from exploresft_jax.demo.report import LABELS

    for c in cl.CLAIMS:
        assert c.gate is None or c.gate in cl.GATES
        assert c.a in LABELS and c.b in LABELS and c.direction in ("higher", "lower")
    pairs = {(c.paper, c.metric, c.stage, c.a, c.b) for c in cl.CLAIMS}
    for need in [("OXA", "pass@1", "fine-tuned", "oxa", "sft"), ("OXA", "pass@k", "fine-tuned", "oxa", "sft"),
                 ("CurioSFT", "pass@1", "fine-tuned", "curio", "sft"), ("OXA", "pass@1", "grpo", "oxa", "sft"),
                 ("CurioSFT", "pass@1", "grpo", "curio", "sft")]:
        assert need in pairs, need
