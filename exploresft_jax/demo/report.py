"""results.json, REPORT.md and its plots from the demo's stages: per-arm statistics over seeds, the premise gates,
the claims judged by `claims.judge`, and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import exploresft_jax.demo.claims as cl
from exploresft_jax.data import word_problems as wp
from exploresft_jax.demo.tasks import TOKEN_CLASSES
from exploresft_jax.train.logger import read_metrics

LABELS = {"base": "base model", "sft": "SFT (random data)", "oxa": "OXA", "oxa_mle": "OXA-MLE (no UL)",
          "curio": "CurioSFT", "entropy_reg": "SFT + entropy reg."}
STAGES = ("pretrained", "fine-tuned", "grpo")
STAGE_NAMES = {"pretrained": "pretrained", "fine-tuned": "fine-tuned", "grpo": "+ GRPO"}


def _jsonl(path: Path) -> list[dict]:
    return read_metrics(path)  # [] when the file does not exist


def _tier_mix(rows: list[dict]) -> dict[str, float]:
    return {str(k): sum(r.get("tier") == k for r in rows) / max(len(rows), 1) for k in wp.TIERS}


def selection_summary(work: Path) -> dict:
    """PPL and tier statistics of the teacher pool, the OXA selection, the random selection and the negatives."""
    work = Path(work)
    teacher = _jsonl(work / "data" / "teacher.ppl.jsonl")
    oxa = _jsonl(work / "select" / "oxa.jsonl")
    pos = [r for r in oxa if r["loss_type"] == "ce"]
    neg = [r for r in oxa if r["loss_type"] == "ul"]
    rnd = _jsonl(next(iter(sorted((work / "select").glob("random_*.jsonl"))), work / "none"))
    selfs = _jsonl(work / "data" / "self.ppl.jsonl")

    def stats(rows):
        p = [r["ppl"] for r in rows if "ppl" in r]
        return {"n": len(rows), "ppl_mean": float(np.mean(p)) if p else None, "tiers": _tier_mix(rows)}

    def mean_ppl(rows):
        return float(np.mean([r["ppl"] for r in rows])) if rows else None

    from exploresft_jax.demo.base_model import boxed_value
    from exploresft_jax.demo.tasks import problem_sets

    bugs = {p["prompt"]: set(p["bug_answers"]) for p in problem_sets()["teacher"]}
    neg_bug = [boxed_value(r["response"]) in bugs.get(r["prompt"], ()) for r in neg]

    return {"teacher": stats(teacher), "oxa_positives": stats(pos), "random": stats(rnd),
            "negatives": {**stats(neg), "bug_share": float(np.mean(neg_bug)) if neg else None},
            "teacher_ppl_by_tier": {str(k): mean_ppl([r for r in teacher if r.get("tier") == k]) for k in wp.TIERS},
            "teacher_ppl_by_carries": {str(c): mean_ppl([r for r in teacher if r.get("carries") == c])
                                       for c in sorted({r.get("carries") for r in teacher if "carries" in r})},
            "self": {"n": len(selfs), "correct_rate": float(np.mean([r["correct"] for r in selfs])) if selfs else None,
                     "wrong_queries": len({r["prompt"] for r in selfs if not r["correct"]})}}


# --- aggregation -------------------------------------------------------------------------------------------------

def _stat(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "per_seed": [float(x) for x in v]}


def _arm_stage(evals: list[dict]) -> dict:
    """The per-seed evaluations of one arm at one stage -> {metric: {"mean", "std", "per_seed"}}."""
    ks = sorted(int(k) for k in evals[0]["pass_at_k"])
    out = {"pass@1": _stat([e["pass_at_k"]["1"] for e in evals]),
           "pass@k": {str(k): _stat([e["pass_at_k"][str(k)] for e in evals]) for k in ks},
           "pass@1_by_tier": {t: _stat([e["pass@1_by_tier"][t] for e in evals]) for t in evals[0]["pass@1_by_tier"]},
           "entropy": _stat([e["entropy"] for e in evals]),
           "entropy_by_class": {c: _stat([e["entropy_by_class"][c] for e in evals])
                                for c in evals[0]["entropy_by_class"]},
           "well_formed": _stat([e["checks"]["well_formed"] for e in evals]),
           "wrong_is_bug": _stat([e["checks"]["wrong_is_bug"] for e in evals])}
    if "entropy_tf" in evals[0]:
        out["entropy_tf"] = {c: _stat([e["entropy_tf"][c] for e in evals]) for c in evals[0]["entropy_tf"]}
    return out


def per_seed_values(arms: dict, arm: str, stage: str, metric: str) -> list[float] | None:
    """An arm's per-seed values of a claim metric ("pass@<k>", "entropy", "entropy_tf", "entropy_tf.<class>"), or
    None when the run did not measure it."""
    row = arms.get(arm, {}).get(stage)
    if row is None:
        return None
    if metric.startswith("pass@"):
        stat = row["pass@k"].get(metric[len("pass@"):])
    elif metric.startswith("entropy_tf"):
        cls = metric.split(".")[1] if "." in metric else "all"
        stat = row.get("entropy_tf", {}).get(cls)
    else:
        stat = row.get(metric)
    return None if stat is None else list(stat["per_seed"])


def premise_gates(arms: dict, selection: dict, k: int) -> dict:
    """The premise gates (claims.GATES), each {"value", "required", "met"}, from the base model's and SFT's
    held-out numbers and the teacher pool's perplexities."""
    base = arms.get("base", {}).get("pretrained")
    sft = arms.get("sft", {}).get("fine-tuned")
    ppl = selection.get("teacher_ppl_by_tier", {})
    lo, hi = ppl.get(str(wp.TIERS[0])), ppl.get(str(wp.TIERS[-1]))
    return {
        "teacher_gain": cl.gate(sft["pass@1"]["mean"] - base["pass@1"]["mean"] if base and sft else None, 0.05),
        "passk_headroom": cl.gate(base["pass@k"][str(k)]["mean"] if base and str(k) in base["pass@k"] else None,
                                  0.9, at_least=False),
        "entropy": cl.gate(base["entropy_tf"]["all"]["mean"] if base and "entropy_tf" in base else None, 0.1),
        "ppl_tracks_difficulty": cl.gate(hi / lo - 1 if lo and hi else None, 0.02),
        "confident_mistakes": cl.gate(selection.get("negatives", {}).get("bug_share"), 0.5),
    }


def _rl_curves(runs: dict) -> dict:
    """GRPO's per-iteration reward on its rollouts for each start: {arm: {"step": [...], "reward_mean": {...}}}."""
    out = {}
    for arm in LABELS:
        rows = [_jsonl(e["grpo_metrics"]) for k, e in runs.items() if k.split("/")[0] == arm and "grpo_metrics" in e]
        rows = [r for r in rows if r]
        if not rows:
            continue
        n = min(len(r) for r in rows)
        vals = np.asarray([[x["reward_mean"] for x in r[:n]] for r in rows])
        out[arm] = {"step": [x["step"] for x in rows[0][:n]], "reward_mean": vals.mean(0).tolist(),
                    "reward_std": (vals.std(0, ddof=1) if len(vals) > 1 else np.zeros(n)).tolist()}
    return out


def build_results(runs: dict, *, seeds: list[int], settings: dict, selection: dict, **extra) -> dict:
    """results.json: the evaluation's sizes, per-arm per-stage statistics over seeds, the premise gates, the claims
    (claims.judge) and the RL curves."""
    arms: dict = {}
    for arm in LABELS:
        for stage in STAGES:
            evals = [e[stage] for k, e in runs.items() if k.split("/")[0] == arm and stage in e]
            if evals:
                arms.setdefault(arm, {})[stage] = _arm_stage(evals)
    k = settings["claim_k"]
    premise = premise_gates(arms, selection, k)
    judged = cl.judge(cl.CLAIMS, lambda a, st, m: per_seed_values(arms, a, st, m), premise, k)
    return {"seeds": seeds,
            "eval": {"problems": settings["eval_problems"], "samples": settings["eval_samples"],
                     "temperature": settings["eval_temperature"], "claim_k": k},
            "premise": premise, "claims": judged, "verdict_rule": cl.VERDICT_RULE, "arms": arms,
            "rl_curves": _rl_curves(runs), "settings": settings, "selection": selection, **extra, "runs": runs}


# --- tables ---------------------------------------------------------------------------------------------------------

def _fmt(stat: dict | None, pct: bool = True) -> str:
    if stat is None:
        return "-"
    scale = 100.0 if pct else 1.0
    m, sd = stat["mean"] * scale, stat["std"] * scale
    digits = 1 if pct else 3
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if len(stat["per_seed"]) > 1 else f"{m:.{digits}f}"


def table(arms: dict, k: int) -> str:
    """The Markdown results table: one row per (arm, stage)."""
    any_row = next(iter(next(iter(arms.values())).values()))
    n = max(int(x) for x in any_row["pass@k"])
    tiers = list(any_row["pass@1_by_tier"])
    head = (["model", "stage", "Pass@1 (%)", f"Pass@{k} (%)", f"Pass@{n} (%)"]
            + [f"Pass@1, {t} steps (%)" for t in tiers]
            + ["entropy, teacher-forced (nats)", "entropy, own samples (nats)", "wrong = bug (%)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage in STAGES:
        for arm in LABELS:
            row = arms.get(arm, {}).get(stage)
            if row is None:
                continue
            cells = [LABELS[arm], STAGE_NAMES[stage], _fmt(row["pass@1"]), _fmt(row["pass@k"].get(str(k))),
                     _fmt(row["pass@k"][str(n)])] + [_fmt(row["pass@1_by_tier"][t]) for t in tiers]
            cells += [_fmt(row.get("entropy_tf", {}).get("all"), pct=False), _fmt(row["entropy"], pct=False),
                      _fmt(row["wrong_is_bug"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(x, scale: float, digits: int, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{scale * x:{'+' if sign else ''}.{digits}f}"


def claims_table(rows: list[dict]) -> str:
    lines = ["| paper | claim | metric, stage | A | B | A - B | se | t* | detectable | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = r["metric"].startswith("pass@")
        scale, digits = (100.0, 1) if pct else (1.0, 3)
        unit = "pts" if pct else "nats"

        def cell(vals):
            return "-" if vals is None else _fmt(_stat(vals), pct)

        lines.append(
            f"| {r['paper']} | {r['claim']} | {r['metric']} ({unit}), {r['stage']} | {r['a']}: {cell(r['a_per_seed'])} "
            f"| {r['b']}: {cell(r['b_per_seed'])} | {_num(r['difference'], scale, digits, True)} | "
            f"{_num(r['se'], scale, digits)} | {_num(r['critical_value'], 1.0, 2)} | "
            f"{_num(r['detectable'], scale, digits)} | **{r['verdict']}** |")
    return "\n".join(lines)


def gates_table(premise: dict) -> str:
    lines = ["| gate | what it measures | value | required | met |", "|---|---|---|---|---|"]
    for name, g in premise.items():
        v = "-" if g["value"] is None else f"{g['value']:.3f}"
        lines.append(f"| {name} | {cl.GATES[name]} | {v} | {g['required']} | {'yes' if g['met'] else '**no**'} |")
    return "\n".join(lines)


# --- plots --------------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _stages(arms: dict) -> list[str]:
    return [s for s in ("fine-tuned", "grpo") if any(s in a for a in arms.values())]


def plot_pass_at_k(results: dict, out: Path) -> Path:
    """Pass@k (k = 1..n) per arm after fine-tuning (and after GRPO), mean over seeds with the min-max band."""
    plt = _plt()
    arms = results["arms"]
    stages = _stages(arms)
    fig, axes = plt.subplots(1, len(stages), figsize=(5.5 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for arm in LABELS:
            row = arms.get(arm, {}).get("pretrained" if arm == "base" else stage)
            if row is None:
                continue
            ks = sorted(int(k) for k in row["pass@k"])
            per = np.asarray([row["pass@k"][str(k)]["per_seed"] for k in ks]).T * 100
            ax.plot(ks, per.mean(0), "k--" if arm == "base" else "-", label=LABELS[arm])
            if len(per) > 1:
                ax.fill_between(ks, per.min(0), per.max(0), alpha=0.15, color="k" if arm == "base" else None)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples per problem)")
        ax.set_ylabel("Pass@k (%) on held-out problems")
        ax.set_title("after fine-tuning" if stage == "fine-tuned" else "after fine-tuning + GRPO")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, out)


def _bars(ax, arms: dict, stage: str, values, labels: list[str], ylabel: str, title: str) -> None:
    present = [a for a in LABELS if (arms.get(a, {}).get("pretrained" if a == "base" else stage)) is not None]
    width = 0.8 / max(len(present), 1)
    for i, arm in enumerate(present):
        row = arms[arm]["pretrained" if arm == "base" else stage]
        m, e = zip(*[values(row, x) for x in labels])
        ax.bar(np.arange(len(labels)) + i * width, m, width, yerr=e, label=LABELS[arm])
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)


def plot_tiers(results: dict, out: Path) -> Path:
    """Held-out Pass@1 by tier (steps per problem) per arm: where the teacher's knowledge shows."""
    plt = _plt()
    arms = results["arms"]
    stages = _stages(arms)
    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4), squeeze=False)
    tiers = [str(t) for t in wp.TIERS]
    for ax, stage in zip(axes[0], stages):
        _bars(ax, arms, stage, lambda row, t: (100 * row["pass@1_by_tier"][t]["mean"],
                                               100 * row["pass@1_by_tier"][t]["std"]),
              tiers, "Pass@1 (%)", f"held-out Pass@1 by steps per problem, {STAGE_NAMES[stage]}")
    return _save(plt, fig, out)


def plot_entropy(results: dict, out: Path) -> Path:
    """Teacher-forced entropy by token class per arm on the shared held-out set, and the training-data entropy
    during fine-tuning."""
    plt = _plt()
    arms = results["arms"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    classes = ["all", *TOKEN_CLASSES]
    _bars(axes[0], arms, "fine-tuned",
          lambda row, c: (row["entropy_tf"][c]["mean"], row["entropy_tf"][c]["std"]) if "entropy_tf" in row
          else (np.nan, 0.0), classes, "mean token entropy (nats)",
          "teacher-forced on the shared held-out solutions, fine-tuned")
    ax = axes[1]
    for arm in LABELS:
        keys = [k for k in results["runs"] if k.split("/")[0] == arm and "train_metrics" in results["runs"][k]]
        if keys:
            rows = _jsonl(results["runs"][keys[0]]["train_metrics"])
            ax.plot([r["step"] for r in rows], [r["entropy"] for r in rows], label=LABELS[arm])
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("token entropy on training data (nats)")
    ax.set_title(f"during fine-tuning (seed {results['seeds'][0]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


def plot_rl(results: dict, out: Path) -> Path:
    """GRPO's rollout reward per iteration for each start (mean over seeds, ± std)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, c in results.get("rl_curves", {}).items():
        m, sd = np.asarray(c["reward_mean"]), np.asarray(c["reward_std"])
        ax.plot(c["step"], m, marker=".", label=LABELS[arm])
        ax.fill_between(c["step"], m - sd, m + sd, alpha=0.15)
    ax.set_xlabel("GRPO iteration")
    ax.set_ylabel("mean reward of the rollouts")
    ax.set_title("RL from each fine-tuned start")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


def plot_ppl(work: Path, out: Path) -> Path:
    """Teacher solutions' PPL under the base model by tier, with the OXA and random selections, and the
    negatives'."""
    plt = _plt()
    teacher = _jsonl(work / "data" / "teacher.ppl.jsonl")
    oxa = _jsonl(work / "select" / "oxa.jsonl")
    rnd = _jsonl(next(iter(sorted((work / "select").glob("random_*.jsonl"))), work / "none"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    all_p = [r["ppl"] for r in teacher]
    bins = np.linspace(min(all_p), max(all_p), 40)
    for t in wp.TIERS:
        ax.hist([r["ppl"] for r in teacher if r.get("tier") == t], bins=bins, alpha=0.35,
                label=f"teacher, {t} steps")
    ax.hist([r["ppl"] for r in oxa if r["loss_type"] == "ce"], bins=bins, histtype="step", lw=2, color="k",
            label="OXA-selected")
    ax.hist([r["ppl"] for r in rnd], bins=bins, histtype="step", lw=2, ls="--", color="tab:red",
            label="random selection")
    ax.set_xlabel("perplexity under the base model")
    ax.set_ylabel("solutions")
    ax.set_title("verified teacher solutions (CE data)")
    ax.legend(fontsize=8)
    ax = axes[1]
    neg = [r["ppl"] for r in oxa if r["loss_type"] == "ul"]
    if neg:
        ax.hist(neg, bins=30, color="tab:orange")
    ax.set_xlabel("perplexity under the base model")
    ax.set_title(f"OXA negatives: the base model's most confident wrong samples ({len(neg)})")
    return _save(plt, fig, out)


# --- the report ---------------------------------------------------------------------------------------------------

def _selection_lines(sel: dict) -> list[str]:
    lines = ["| set | solutions | mean PPL | " + " | ".join(f"{t} steps (%)" for t in wp.TIERS) + " |",
             "|---|---|---|" + "---|" * len(wp.TIERS)]
    for name, key in (("teacher pool", "teacher"), ("OXA positives", "oxa_positives"), ("random selection", "random"),
                      ("OXA negatives", "negatives")):
        st = sel.get(key)
        if not st:
            continue
        ppl = f"{st['ppl_mean']:.3f}" if st["ppl_mean"] is not None else "-"
        lines.append(f"| {name} | {st['n']} | {ppl} | "
                     + " | ".join(f"{100 * st['tiers'][str(t)]:.0f}" for t in wp.TIERS) + " |")
    by_tier = {k: v for k, v in sel.get("teacher_ppl_by_tier", {}).items() if v is not None}
    by_carry = {k: v for k, v in sel.get("teacher_ppl_by_carries", {}).items() if v is not None}
    if by_tier:
        tiers = ", ".join(f"{k} steps {v:.3f}" for k, v in by_tier.items())
        carries = ", ".join(f"{k} {v:.3f}" for k, v in by_carry.items())
        lines += ["", f"Mean PPL of the teacher solutions under the base model, by steps per problem: {tiers}; by "
                  f"carries and borrows in the solution: {carries}."]
    return lines


def write_report(work: Path, results: dict, settings) -> Path:
    """Writes the plots and REPORT.md under `work` from `results` (results.json); returns REPORT.md's path."""
    work = Path(work)
    plot_pass_at_k(results, work / "passk.png")
    plot_tiers(results, work / "tiers.png")
    plot_entropy(results, work / "entropy.png")
    plot_ppl(work, work / "ppl_hist.png")
    has_rl = bool(results.get("rl_curves"))
    if has_rl:
        plot_rl(results, work / "rl_reward.png")
    arms = results["arms"]
    sel = results.get("selection", {})
    s = settings
    seeds = results["seeds"]
    ev = results["eval"]
    win = results.get("window", {})
    t = results.get("timings", {})
    ch = results.get("choices", {})
    recipe = (results.get("base_recipe") or {}).get("recipe", {})
    counts = {v: sum(c["verdict"] == v for c in results["claims"])
              for v in ("reproduced", "not reproduced", "within noise", "untestable", "not run", "undetermined")}
    lines = [
        "# exploresft_jax demo: SFT, OXA, OXA-MLE, CurioSFT and entropy-regularised SFT on a toy verifiable task",
        "",
        f"Seeds: {', '.join(map(str, seeds))}; every figure is the mean ± sample std over seeds. Held-out: "
        f"{ev['problems']} problems, {ev['samples']} samples each at temperature {ev['temperature']}; the claims "
        f"compare Pass@1 and Pass@{ev['claim_k']}. The base model and the teacher data are shared by all seeds; a "
        "seed drives the random selection, the data order, the methods' randomness and the evaluation samples.",
        "",
        "Claims: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ".",
        "",
        "## Premise gates",
        "",
        "Measured before any claim is judged. A claim whose gate is not met reads *untestable*: the task could not "
        "show its effect either way.",
        "",
        gates_table(results["premise"]),
        "",
        "## The papers' claims, checked",
        "",
        f"Rule (applied by code, `exploresft_jax/demo/claims.py`): {results['verdict_rule']} *detectable*: the "
        "smallest difference this run would call significant with 80% power, (t* + t_0.80) se.",
        "",
        claims_table(results["claims"]),
        "",
        "## Results",
        "",
        "Pass@k is the unbiased estimator; *teacher-forced entropy* the mean entropy of the model's next-token "
        "distribution (temperature 1) along one shared set of teacher solutions to the held-out problems; *own "
        "samples* the same along each model's own samples, at the sampling temperature; *wrong = bug* the share of "
        "wrong samples whose boxed value is what dropping carries/borrows gives.",
        "",
        table(arms, ev["claim_k"]),
        "",
        "![pass@k](passk.png)",
        "",
        "![Pass@1 by tier](tiers.png)",
        "",
        "![token entropy](entropy.png)",
        "",
        *(["![RL reward per start](rl_reward.png)", ""] if has_rl else []),
        "![perplexity of the selected data](ppl_hist.png)",
        "",
        "## What ran",
        "",
        "1. **Task** (`exploresft_jax.data.word_problems`): add/subtract word problems with 2, 3 or 4 steps of 2-9 "
        "from a start of 20-99 (the tier), solved step by step in any order of the steps, with a linking word "
        "between steps, ending with a boxed answer.",
        f"2. **Base model** (shipped, `exploresft_jax/demo/assets/base`, rebuilt by `scripts/demo.py --pretrain`): "
        f"a random Qwen2 ({recipe.get('layers', '?')} layers, width {recipe.get('hidden', '?')}, digit-level BPE of "
        f"{recipe.get('bpe_vocab', '?')} tokens) pretrained for {recipe.get('steps', '?')} steps on "
        f"{recipe.get('corpus_problems', '?')} problems, with shares "
        f"{', '.join(f'{100 * p:.0f}%' for p in recipe.get('tier_probs', ()))} of 2, 3 and 4 steps, of which "
        f"{', '.join(f'{100 * p:.0f}%' for p in recipe.get('bug_rates', ()))} drop every carry and borrow: it "
        "learns the procedure on easy problems only.",
        f"3. **Teacher data**: two correct solutions (different orders or links) to each of {s.teacher_problems} "
        f"problems in every tier. **Self samples**: {s.self_samples} samples of the base model (temperature 1) on "
        f"each, labelled by the verifier (correct rate {100 * (sel.get('self', {}).get('correct_rate') or 0):.1f}%, "
        f"{sel.get('self', {}).get('wrong_queries', 0)} problems with a wrong sample).",
        f"4. **Scoring and selection**: `scripts/score_ppl.py --condition-on-prompt` on both (conditioned on the "
        "problem, unlike the release, because a solution's numbers are unpredictable without it); "
        f"`scripts/select_oxa.py` with mu = {win.get('mu', float('nan')):.3f}, sigma = "
        f"{win.get('sigma', float('nan')):.3f} (mu at the 75th percentile of the teacher PPLs) picks "
        f"{sel.get('oxa_positives', {}).get('n', 0)} positives and the {sel.get('negatives', {}).get('n', 0)} "
        f"most confident negatives (lowest PPL, one per problem, above the floor "
        f"{win.get('neg_floor', float('nan')):.3f}: the 5th percentile of the self samples' PPL); the baselines get "
        f"{sel.get('random', {}).get('n', 0)} teacher solutions drawn uniformly (one per problem).",
        f"5. **Fine-tuning** from the base, every arm the same {s.ft_steps} steps of {s.ft_batch} CE sequences (OXA "
        "adds as many UL sequences; OXA-MLE is OXA's data without them), each with the learning rate and "
        "coefficient its validation sweep chose (`scripts/demo.py --sweep`, on problems disjoint from the held-out "
        "ones): " + ", ".join(f"{LABELS[m]} lr {ch[m]['lr']:g}" + (f" coef {ch[m]['coef']:g}" if ch[m]['coef'] else "")
                              for m in LABELS if m in ch) + ". "
        "CE reduction: OXA and OXA-MLE average each example's token mean (the release's), the other arms the token "
        "mean over the step (their releases').",
        (f"6. **GRPO** from each fine-tuned model: {s.grpo_steps} iterations of {s.grpo_prompts} prompts x "
         f"{s.grpo_group} samples, lr {ch.get('grpo', {}).get('lr', float('nan')):g}, verifier rewards."
         if has_rl else "6. **GRPO**: not run (`--full` runs it; the after-RL claims read *not run*)."),
        "",
        "## Data selection",
        "",
        *_selection_lines(sel),
        "",
        f"## Sample outputs (first held-out problem, first sample, seed {seeds[0]})",
        "",
    ]
    for key, entry in results["runs"].items():
        if not key.endswith(f"/seed{seeds[0]}"):
            continue
        for stage, e in entry.items():
            if stage in STAGES:
                ex = e["examples"][0]
                lines.append(f"- **{key.split('/')[0]}, {stage}** ({'correct' if ex['correct'] else 'wrong'}, "
                             f"gold {ex['answer']}): `{ex['response'][:160]}`")
    lines += ["", "## Time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in t.items()]
    lines += ["", "Everything ran on CPU; finished stages are reused when the demo runs again in the same folder.",
              "Files: `results.json` (every number above), `runs/<arm>/seed<k>/` (metrics.jsonl, eval.json, "
              "hf_export/, grpo/), `select/` (the OXA set, its report and histogram), `data/`.", ""]
    path = work / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


# --- README's demo section ------------------------------------------------------------------------------------------

README_START = "<!-- demo results: generated by `python scripts/demo.py --readme DIR`; do not edit by hand -->"
README_END = "<!-- end of demo results -->"


def readme_section(results: dict, plots: str = "docs/demo") -> str:
    """README's demo section from a run's results.json: the sizes and time, the premise gates, the claims with
    their verdicts and the results table, whatever they say (the same tables as REPORT.md)."""
    ev, s = results["eval"], results["settings"]
    t = results.get("timings", {})
    arms = [a for a in LABELS if a in results["arms"] and a != "base"]
    stages = [STAGE_NAMES[st] for st in ("fine-tuned", "grpo") if any(st in r for r in results["arms"].values())]
    counts = {v: sum(c["verdict"] == v for c in results["claims"])
              for v in ("reproduced", "not reproduced", "within noise", "untestable", "not run", "undetermined")}
    failed = [name for name, g in results["premise"].items() if not g["met"]]
    lines = [
        README_START,
        "",
        f"`python scripts/demo.py` (seeds {', '.join(map(str, results['seeds']))}; "
        f"{t.get('total', float('nan')) / 60:.1f} minutes on 2 CPU cores): {ev['problems']} held-out problems x "
        f"{ev['samples']} samples at temperature {ev['temperature']}; arms {', '.join(LABELS[a] for a in arms)}, "
        f"each {s['ft_steps']} steps of {s['ft_batch']} sequences from the same base at the learning rate and "
        f"coefficient its validation sweep chose; stages: {', '.join(stages)}. Mean ± sample std over seeds.",
        "",
        "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ". Premise gates not met: "
        + (", ".join(failed) if failed else "none") + ".",
        "",
        gates_table(results["premise"]),
        "",
        f"Rule: {results['verdict_rule']} *detectable*: the smallest difference this run would call significant "
        "with 80% power.",
        "",
        claims_table(results["claims"]),
        "",
        table(results["arms"], ev["claim_k"]),
        "",
        f"![pass@k curves]({plots}/passk.png)",
        f"![Pass@1 by tier]({plots}/tiers.png)",
        f"![token entropy]({plots}/entropy.png)",
        *([f"![RL reward per start]({plots}/rl_reward.png)"] if results.get("rl_curves") else []),
        f"![perplexity of the selected data]({plots}/ppl_hist.png)",
        "",
        README_END,
    ]
    return "\n".join(lines)


def replace_readme_section(readme: str, section: str) -> str:
    """`readme` with the text between README_START and README_END (markers included) replaced by `section`."""
    if README_START not in readme or README_END not in readme:
        raise ValueError(f"README: the demo section's markers are missing ({README_START!r} ... {README_END!r})")
    head, rest = readme.split(README_START, 1)
    return head + section + rest.split(README_END, 1)[1]
