"""The papers' claims the demo checks, the premise gates they rest on, and the verdict rule, applied by code.

A claim compares two arms (`a`, `b`) on one metric at one stage over seeds: "OXA's Pass@1 is higher than SFT's
after fine-tuning". Its verdict follows Welch's two-sample t test on the per-seed values, two-sided at 95%:

  d  = mean(a) - mean(b)                       (the difference, in the metric's units)
  se = sqrt(var(a) / n_a + var(b) / n_b)       (sample variances over seeds, ddof = 1)
  nu = se^4 / ((var(a)/n_a)^2 / (n_a - 1) + (var(b)/n_b)^2 / (n_b - 1))   (Welch-Satterthwaite)
  t* = the 97.5% quantile of Student's t at nu degrees of freedom

  |d| > t* se in the claimed direction   -> "reproduced"
  |d| > t* se against it                 -> "not reproduced"
  otherwise                              -> "within noise"

and before that:
  a metric the run did not measure       -> "not run"
  fewer than 2 seeds on either side      -> "undetermined"
  the claim's premise gate not met       -> "untestable"  (the task cannot show the effect either way)
  a Pass@k comparison with both means >= 0.98 -> "untestable"  (saturated: no room to differ)

The power note gives each claim's smallest detectable difference at these sizes: (t* + t_0.80) se, the
difference the test would call significant four times out of five, with se as measured.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# two-sided 95%; power for the detectable-difference note
ALPHA = 0.05
POWER = 0.80
SATURATED = 0.98  # a Pass@k comparison whose two means are both at least this is untestable

VERDICT_RULE = (
    "Welch's two-sample t test on the per-seed values, two-sided 95%: d = mean(A) - mean(B); "
    "se = sqrt(var(A)/n_A + var(B)/n_B) (sample variances over seeds); critical value t* = the 97.5% quantile of "
    "Student's t at Welch-Satterthwaite degrees of freedom. Reproduced: |d| > t* se in the claimed direction; "
    "not reproduced: |d| > t* se against it; within noise: otherwise. Untestable: the claim's premise gate is not "
    "met, or a Pass@k comparison has both means >= 0.98. Not run: the run did not measure it. Undetermined: fewer "
    "than 2 seeds.")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim: `a` is `direction` than `b` on `metric` at `stage`.

    metric: "pass@1", "pass@k" (k = the run's claim k, written out as pass@<k> in results), "entropy" (mean
      sampled-token entropy on each arm's own held-out samples, nats), "entropy_tf" (mean teacher-forced token
      entropy on one shared held-out set of teacher solutions, nats), "entropy_tf.<class>" (the same over one
      token class).
    stage: "fine-tuned" or "grpo". gate: the premise gate it depends on (None: none).
    """

    paper: str
    claim: str
    metric: str
    stage: str
    a: str
    b: str
    direction: str = "higher"
    gate: str | None = None


CLAIMS = (
    Claim("OXA", "higher Pass@1 than SFT after fine-tuning (paper: +6 points)", "pass@1", "fine-tuned", "oxa", "sft",
          gate="teacher_gain"),
    Claim("OXA", "higher Pass@k than SFT after fine-tuning (paper: +5 points)", "pass@k", "fine-tuned", "oxa", "sft",
          gate="teacher_gain"),
    Claim("OXA", "higher initial entropy than SFT (teacher-forced, shared set)", "entropy_tf", "fine-tuned", "oxa",
          "sft", gate="entropy"),
    Claim("OXA", "higher initial entropy than SFT (own samples)", "entropy", "fine-tuned", "oxa", "sft",
          gate="entropy"),
    Claim("OXA", "the unlikelihood term adds to the selection (OXA vs OXA-MLE, Pass@1)", "pass@1", "fine-tuned",
          "oxa", "oxa_mle", gate="confident_mistakes"),
    Claim("OXA", "Pass@1 advantage over SFT persists after RL", "pass@1", "grpo", "oxa", "sft", gate="teacher_gain"),
    Claim("OXA", "Pass@k advantage over SFT persists after RL", "pass@k", "grpo", "oxa", "sft", gate="teacher_gain"),
    Claim("CurioSFT", "higher Pass@1 than SFT after fine-tuning (paper: +2.5 points)", "pass@1", "fine-tuned",
          "curio", "sft", gate="teacher_gain"),
    Claim("CurioSFT", "higher Pass@1 than SFT after RL", "pass@1", "grpo", "curio", "sft", gate="teacher_gain"),
    Claim("CurioSFT", "keeps more entropy than SFT (teacher-forced, shared set)", "entropy_tf", "fine-tuned", "curio",
          "sft", gate="entropy"),
    Claim("CurioSFT", "without entropy regularisation's flattening: lower entropy on result digits than "
          "entropy-regularised SFT", "entropy_tf.result", "fine-tuned", "curio", "entropy_reg", direction="lower",
          gate="entropy"),
)

# the premise gates: name -> (what it measures, the dependent claims' reason to need it)
GATES = {
    "teacher_gain": "SFT on the teacher data minus the base model, held-out Pass@1 (the teacher knows more)",
    "passk_headroom": "the base model's held-out Pass@k at the claims' k (room for Pass@k to rise)",
    "entropy": "the base model's mean token entropy along the shared held-out teacher solutions, nats (real "
               "choices to keep)",
    "ppl_tracks_difficulty": "teacher perplexity under the base, hardest tier over easiest tier, minus 1 "
                             "(unfamiliarity drives OXA's selection)",
    "confident_mistakes": "share of OXA's negatives (the base model's most confident wrong answers, what "
                          "unlikelihood pushes down) that are its systematic dropped-carry mistake",
}


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` (real, > 0) degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(q, df))


def welch(a, b) -> dict:
    """Welch's test quantities for per-seed values `a`, `b`: {"difference", "se", "df", "critical_value",
    "detectable"} (float64; df, critical value and detectable difference are nan when se is 0)."""
    va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = len(va), len(vb)
    d = float(va.mean() - vb.mean())
    sa, sb = va.var(ddof=1) / na, vb.var(ddof=1) / nb
    se = float(math.sqrt(sa + sb))
    if se == 0.0:
        return {"difference": d, "se": 0.0, "df": float("nan"), "critical_value": float("nan"),
                "detectable": float("nan")}
    df = (sa + sb) ** 2 / (sa ** 2 / (na - 1) + sb ** 2 / (nb - 1))
    crit = t_quantile(1 - ALPHA / 2, df)
    return {"difference": d, "se": se, "df": float(df), "critical_value": crit,
            "detectable": (crit + t_quantile(POWER, df)) * se}


def verdict(a, b, direction: str = "higher") -> tuple[dict, str]:
    """(welch quantities, verdict) for the claim "`a` is `direction` than `b`" from per-seed values (the rule
    in the module docstring, without the gate and saturation cases)."""
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    if min(len(a), len(b)) < 2:
        return {"difference": float(np.mean(a) - np.mean(b)), "se": float("nan"), "df": float("nan"),
                "critical_value": float("nan"), "detectable": float("nan")}, "undetermined"
    w = welch(a, b)
    signed = w["difference"] if direction == "higher" else -w["difference"]
    if w["se"] == 0.0:  # identical values within each arm: any difference is exact
        v = "reproduced" if signed > 0 else "not reproduced" if signed < 0 else "within noise"
    else:
        bound = w["critical_value"] * w["se"]
        v = "reproduced" if signed > bound else "not reproduced" if signed < -bound else "within noise"
    return w, v


def gate(value: float | None, required: float, at_least: bool = True) -> dict:
    """One premise gate's entry: {"value", "required", "met"} (`required` a lower bound, or an upper bound with
    at_least=False; a value the run did not measure is not met)."""
    met = value is not None and not math.isnan(value) and (value >= required if at_least else value <= required)
    return {"value": value, "required": (">= " if at_least else "<= ") + f"{required:g}", "met": bool(met)}


def metric_name(metric: str, k: int) -> str:
    return f"pass@{k}" if metric == "pass@k" else metric


def judge(claims_: tuple[Claim, ...], per_seed, premise: dict, k: int) -> list[dict]:
    """Every claim's results.json entry.

    per_seed(arm, stage, metric) -> the per-seed values (list of float) or None when the run did not measure
    them; premise: {gate: {"value", "required", "met"}}; k: the claims' Pass@k.
    """
    out = []
    for c in claims_:
        metric = metric_name(c.metric, k)
        a, b = per_seed(c.a, c.stage, metric), per_seed(c.b, c.stage, metric)
        row = {"paper": c.paper, "claim": c.claim, "metric": metric, "stage": c.stage, "a": c.a, "b": c.b,
               "direction": c.direction, "a_per_seed": a, "b_per_seed": b, "gate": c.gate,
               "difference": None, "se": None, "critical_value": None, "df": None, "detectable": None}
        if a is None or b is None:
            out.append({**row, "verdict": "not run"})
            continue
        w, v = verdict(a, b, c.direction)
        row.update(w)
        if c.gate is not None and not premise.get(c.gate, {}).get("met", False):
            v = "untestable"
        elif metric.startswith("pass@") and min(np.mean(a), np.mean(b)) >= SATURATED:
            v = "untestable"
        out.append({**row, "verdict": v})
    return out
