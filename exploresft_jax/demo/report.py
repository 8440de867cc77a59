"""REPORT.md and its plots from the demo's results (results.json plus the files the stages wrote)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exploresft_jax.data import word_problems as wp
from exploresft_jax.demo.tasks import TOKEN_CLASSES
from exploresft_jax.train.logger import read_metrics

LABELS = {"base": "base model", "sft": "SFT (random data)", "oxa": "OXA", "curio": "CurioSFT",
          "entropy_reg": "SFT + entropy reg."}
RARE = ("split", "columns")


def _jsonl(path: Path) -> list[dict]:
    return read_metrics(path)  # [] when the file does not exist


def _mix(rows: list[dict]) -> dict[str, float]:
    styles = [wp.style_of(r["response"]) for r in rows]
    return {s: styles.count(s) / max(len(styles), 1) for s in (*wp.STYLES, "other")}


def selection_summary(work: Path) -> dict:
    """PPL and style statistics of the teacher pool, the OXA selection, the random selection and the negatives."""
    work = Path(work)
    teacher = _jsonl(work / "data" / "teacher.ppl.jsonl")
    oxa = _jsonl(work / "select" / "oxa.jsonl")
    pos = [r for r in oxa if r["loss_type"] == "ce"]
    neg = [r for r in oxa if r["loss_type"] == "ul"]
    rnd = _jsonl(next(iter(sorted((work / "select").glob("random_*.jsonl"))), work / "none"))
    selfs = _jsonl(work / "data" / "self.ppl.jsonl")

    def stats(rows):
        p = [r["ppl"] for r in rows if "ppl" in r]
        return {"n": len(rows), "ppl_mean": float(np.mean(p)) if p else None, "style_mix": _mix(rows)}

    by_style = {s: float(np.mean([r["ppl"] for r in teacher if r["style"] == s])) for s in wp.STYLES
                if any(r["style"] == s for r in teacher)}
    return {"teacher": stats(teacher), "teacher_ppl_by_style": by_style, "oxa_positives": stats(pos),
            "random": stats(rnd), "negatives": stats(neg),
            "self": {"n": len(selfs), "correct_rate": float(np.mean([r["correct"] for r in selfs])) if selfs else None}}


# --- aggregation -------------------------------------------------------------------------------------------------

STAGES = ("pretrained", "fine-tuned", "grpo")


def _stat(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "per_seed": [float(x) for x in v]}


def _arm_stage(evals: list[dict]) -> dict:
    """The per-seed evaluations of one arm at one stage -> {metric: {"mean", "std", "per_seed"}}."""
    ks = sorted(int(k) for k in evals[0]["pass_at_k"])
    return {"pass@1": _stat([e["pass_at_k"]["1"] for e in evals]),
            "pass@k": {str(k): _stat([e["pass_at_k"][str(k)] for e in evals]) for k in ks},
            "entropy": _stat([e["entropy"] for e in evals]),
            "entropy_by_class": {c: _stat([e["entropy_by_class"][c] for e in evals])
                                 for c in evals[0]["entropy_by_class"]},
            "styles": {st: _stat([e["style_mix"][st] for e in evals]) for st in evals[0]["style_mix"]},
            "distinct_correct_styles": _stat([e["distinct_correct_styles"] for e in evals]),
            "well_formed": _stat([e["checks"]["well_formed"] for e in evals]),
            "wrong_is_bug": _stat([e["checks"]["wrong_is_bug"] for e in evals])}


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


# the papers' claims: (paper, claim, stage, metric, arm A, arm B, sign): the claim holds when sign * (A - B) > 0
CLAIMS = (
    ("OXA", "higher initial entropy than SFT", "fine-tuned", "entropy", "oxa", "sft", 1),
    ("OXA", "Pass@k >= SFT for large k", "fine-tuned", "pass@kmax", "oxa", "sft", 1),
    ("OXA", "advantage persists after RL (Pass@1)", "grpo", "pass@1", "oxa", "sft", 1),
    ("OXA", "advantage persists after RL (Pass@k, large k)", "grpo", "pass@kmax", "oxa", "sft", 1),
    ("CurioSFT", "entropy preserved relative to SFT", "fine-tuned", "entropy", "curio", "sft", 1),
    ("CurioSFT", "without entropy regularisation's flattening (lower entropy on digit tokens)", "fine-tuned",
     "entropy_by_class.digit", "curio", "entropy_reg", -1),
    ("CurioSFT", ">= SFT after RL (Pass@1)", "grpo", "pass@1", "curio", "sft", 1),
    ("GRPO", "raises the SFT start's Pass@1 over its fine-tuned value", ("grpo", "fine-tuned"), "pass@1", "sft",
     "sft", 1),
)
VERDICT_RULE = ("d = mean(A) - mean(B) over seeds in the claimed direction, se = sqrt(var(A)/n + var(B)/n) "
                "(sample variances over the n seeds); reproduced if d > 2 se, not reproduced if d < -2 se, "
                "otherwise within noise; fewer than 2 seeds: undetermined")


def _metric(arms: dict, arm: str, stage: str, metric: str) -> dict | None:
    row = arms.get(arm, {}).get(stage)
    if row is None:
        return None
    if metric == "pass@kmax":
        return row["pass@k"][str(max(int(k) for k in row["pass@k"]))]
    if "." in metric:
        a, b = metric.split(".")
        return row[a][b]
    return row[metric]


def verdict(a: dict, b: dict, sign: int) -> tuple[float, float, str]:
    """(d, se, verdict) for the claim sign * (A - B) > 0 from two {"per_seed"} statistics (VERDICT_RULE)."""
    va, vb = np.asarray(a["per_seed"], float), np.asarray(b["per_seed"], float)
    d = sign * (va.mean() - vb.mean())
    n = min(len(va), len(vb))
    if n < 2:
        return float(d), float("nan"), "undetermined"
    se = float(np.sqrt(va.var(ddof=1) / len(va) + vb.var(ddof=1) / len(vb)))
    return float(d), se, "reproduced" if d > 2 * se else "not reproduced" if d < -2 * se else "within noise"


def claims(arms: dict) -> list[dict]:
    out = []
    for paper, claim, stage, metric, arm_a, arm_b, sign in CLAIMS:
        st_a, st_b = stage if isinstance(stage, tuple) else (stage, stage)
        a, b = _metric(arms, arm_a, st_a, metric), _metric(arms, arm_b, st_b, metric)
        if a is None or b is None:
            continue
        d, se, v = verdict(a, b, sign)
        out.append({"paper": paper, "claim": claim, "metric": metric, "A": f"{arm_a}/{st_a}",
                    "B": f"{arm_b}/{st_b}", "a": a, "b": b, "difference": d, "se": se, "verdict": v})
    return out


def build_results(runs: dict, *, seeds: list[int], **extra) -> dict:
    """results.json: per-arm, per-stage statistics over seeds, the base checks, the RL curves and the claims."""
    arms: dict = {}
    for arm in LABELS:
        for stage in STAGES:
            evals = [e[stage] for k, e in runs.items() if k.split("/")[0] == arm and stage in e]
            if evals:
                arms.setdefault(arm, {})[stage] = _arm_stage(evals)
    base = [e["pretrained"]["checks"] for k, e in runs.items() if k.startswith("base/")]
    base_checks = {}
    if base:
        base_checks = {k: _stat([b[k] for b in base]) for k in ("pass@1", "well_formed", "wrong_is_bug")}
        base_checks["requirements"] = base[0]["requirements"]
        base_checks["met"] = all(base_checks[k]["mean"] >= v for k, v in base[0]["requirements"].items())
    return {"seeds": seeds, "arms": arms, "base_checks": base_checks, "claims": claims(arms),
            "verdict_rule": VERDICT_RULE, "rl_curves": _rl_curves(runs), **extra, "runs": runs}


def _fmt(stat: dict | None, pct: bool = True) -> str:
    if stat is None:
        return "-"
    scale = 100.0 if pct else 1.0
    m, sd = stat["mean"] * scale, stat["std"] * scale
    digits = 1 if pct else 3
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if len(stat["per_seed"]) > 1 else f"{m:.{digits}f}"


STAGE_NAMES = {"pretrained": "pretrained", "fine-tuned": "fine-tuned", "grpo": "+ GRPO"}


def table(arms: dict) -> str:
    """The Markdown results table: one row per (arm, stage)."""
    any_row = next(iter(next(iter(arms.values())).values()))
    ks = sorted(int(k) for k in any_row["pass@k"])
    show = [k for k in (1, 4, 16) if k in ks] + ([ks[-1]] if ks[-1] not in (1, 4, 16) else [])
    head = (["model", "stage"] + [f"Pass@{k} (%)" for k in show]
            + ["token entropy (nats)", "rare styles (%)", "well-formed (%)", "wrong = bug (%)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage in STAGES:
        for arm in LABELS:
            row = arms.get(arm, {}).get(stage)
            if row is None:
                continue
            rare = {"mean": sum(row["styles"][s]["mean"] for s in RARE),
                    "std": float(np.std(np.sum([row["styles"][s]["per_seed"] for s in RARE], 0), ddof=1))
                    if len(row["entropy"]["per_seed"]) > 1 else 0.0,
                    "per_seed": row["entropy"]["per_seed"]}
            cells = [LABELS[arm], STAGE_NAMES[stage]] + [_fmt(row["pass@k"][str(k)]) for k in show]
            cells += [_fmt(row["entropy"], pct=False), _fmt(rare), _fmt(row["well_formed"]),
                      _fmt(row["wrong_is_bug"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_table(rows: list[dict]) -> str:
    lines = ["| paper | claim | measured (A vs B) | A | B | difference ± se | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = not r["metric"].startswith("entropy")
        unit = " (pts)" if pct else " (nats)"
        scale = 100.0 if pct else 1.0
        lines.append(f"| {r['paper']} | {r['claim']} | {r['metric']}{unit}: {r['A']} vs {r['B']} | "
                     f"{_fmt(r['a'], pct)} | "
                     f"{_fmt(r['b'], pct)} | {scale * r['difference']:+.{1 if pct else 3}f} ± "
                     f"{scale * r['se']:.{1 if pct else 3}f} | **{r['verdict']}** |")
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


def plot_pass_at_k(results: dict, out: Path) -> Path:
    """Pass@k (k = 1..n) per arm after fine-tuning and after GRPO, mean over seeds with the min-max band."""
    plt = _plt()
    arms = results["arms"]
    stages = [s for s in ("fine-tuned", "grpo") if any(s in a for a in arms.values())]
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


def plot_entropy(results: dict, out: Path) -> Path:
    """Token entropy by token class per arm (fine-tuned and after GRPO) and during fine-tuning."""

    plt = _plt()
    arms = results["arms"]
    stages = [s for s in ("fine-tuned", "grpo") if any(s in a for a in arms.values())]
    fig, axes = plt.subplots(1, len(stages) + 1, figsize=(5.5 * (len(stages) + 1), 4))
    width = 0.8 / len(LABELS)
    for ax, stage in zip(axes, stages):
        for i, arm in enumerate(LABELS):
            row = arms.get(arm, {}).get("pretrained" if arm == "base" else stage)
            if row is None:
                continue
            vals = [row["entropy_by_class"][c]["mean"] for c in TOKEN_CLASSES]
            errs = [row["entropy_by_class"][c]["std"] for c in TOKEN_CLASSES]
            ax.bar(np.arange(len(TOKEN_CLASSES)) + i * width, vals, width, yerr=errs, label=LABELS[arm])
        ax.set_xticks(np.arange(len(TOKEN_CLASSES)) + 0.4 - width / 2,
                      ["digits", "operators", "words", "style fork"])
        ax.set_ylabel("mean sampled-token entropy (nats)")
        ax.set_title("held-out samples, " + ("after fine-tuning" if stage == "fine-tuned" else "after GRPO"))
        ax.legend(fontsize=7)
    ax = axes[-1]
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


def plot_styles(results: dict, out: Path) -> Path:
    """The style mix of the held-out samples per arm and stage (stacked bars, mean over seeds)."""
    plt = _plt()
    arms = results["arms"]
    names, mixes = [], []
    for stage in STAGES:
        for arm in LABELS:
            row = arms.get(arm, {}).get(stage)
            if row is not None:
                names.append(LABELS[arm] + ("" if stage == "pretrained" else f"\n{STAGE_NAMES[stage]}"))
                mixes.append([row["styles"][s]["mean"] * 100 for s in (*wp.STYLES, "other")])
    mixes = np.asarray(mixes)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    bottom = np.zeros(len(names))
    for j, st in enumerate((*wp.STYLES, "other")):
        ax.bar(range(len(names)), mixes[:, j], bottom=bottom, label=st)
        bottom += mixes[:, j]
    ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45, ha="right")
    ax.set_ylabel("share of held-out samples (%)")
    ax.set_title("solution styles the models write")
    ax.legend(fontsize=8, loc="lower right")
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
    plt = _plt()
    teacher = _jsonl(work / "data" / "teacher.ppl.jsonl")
    oxa = _jsonl(work / "select" / "oxa.jsonl")
    rnd = _jsonl(next(iter(sorted((work / "select").glob("random_*.jsonl"))), work / "none"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    all_p = [r["ppl"] for r in teacher]
    bins = np.linspace(min(all_p), max(all_p), 40)
    for s in wp.STYLES:
        ax.hist([r["ppl"] for r in teacher if r["style"] == s], bins=bins, alpha=0.35, label=f"teacher, {s} style")
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
    ax.set_title(f"OXA negatives: the base model's wrong samples ({len(neg)})")
    return _save(plt, fig, out)


# --- the report ---------------------------------------------------------------------------------------------------

def _base_checks_lines(results: dict) -> list[str]:
    bc = results.get("base_checks") or {}
    if not bc:
        return []
    req = bc["requirements"]
    rows = [("Pass@1", "pass@1"), ("well-formed (ends in a boxed answer)", "well_formed"),
            ("wrong answers that are the dropped-carry/borrow value", "wrong_is_bug")]
    lines = ["| check | measured (%) | required (%) | met |", "|---|---|---|---|"]
    for name, key in rows:
        lines.append(f"| {name} | {_fmt(bc[key])} | >= {100 * req[key]:.0f} | "
                     f"{'yes' if bc[key]['mean'] >= req[key] else 'no'} |")
    return lines


def write_report(work: Path, results: dict, settings) -> Path:
    """Writes the plots and REPORT.md under `work` from `results` (results.json); returns REPORT.md's path."""
    work = Path(work)
    plot_pass_at_k(results, work / "passk.png")
    plot_entropy(results, work / "entropy.png")
    plot_styles(results, work / "styles.png")
    plot_ppl(work, work / "ppl_hist.png")
    has_rl = bool(results.get("rl_curves"))
    if has_rl:
        plot_rl(results, work / "rl_reward.png")
    arms = results["arms"]
    sel = results.get("selection", {})
    s = settings
    seeds = results["seeds"]
    win = results.get("window", {})
    t = results.get("timings", {})
    ch = results.get("choices", {})
    recipe = (results.get("base_recipe") or {}).get("recipe", {})
    lines = [
        "# exploresft_jax demo: SFT, OXA, CurioSFT and entropy-regularised SFT on a toy verifiable task",
        "",
        f"Seeds: {', '.join(map(str, seeds))}; every figure is the mean ± sample std over seeds. The base model and "
        "the teacher data are shared by all seeds; a seed drives the random selection, the data order, the "
        "methods' randomness, GRPO's rollouts and the evaluation samples.",
        "",
        "## The base model",
        "",
        f"Held-out problems: {s.eval_problems}, {s.eval_samples} samples each at temperature {s.eval_temperature}.",
        "",
        *_base_checks_lines(results),
        "",
        "## Results",
        "",
        "Pass@k is the unbiased estimator; *token entropy* the mean entropy of the sampling distribution over the "
        "generated tokens; *rare styles* the share of samples in the split or column style; *wrong = bug* the "
        "share of wrong samples whose boxed value is what dropping carries/borrows gives.",
        "",
        table(arms),
        "",
        "## The papers' claims, checked",
        "",
        f"Verdict rule: {results.get('verdict_rule', VERDICT_RULE)}. Computed from results.json, not written by hand.",
        "",
        claims_table(results.get("claims", [])),
        "",
        "![pass@k](passk.png)",
        "",
        *(["![RL reward per start](rl_reward.png)", ""] if has_rl else []),
        "![token entropy by class](entropy.png)",
        "",
        "![styles](styles.png)",
        "",
        "![perplexity of the selected data](ppl_hist.png)",
        "",
        "## What ran",
        "",
        "1. **Task** (`exploresft_jax.data.word_problems`): two-step add/subtract word problems (start 20-99, "
        "steps of 2-9), solved in the *direct* style (common), the *split* style (through the round ten) or the "
        "*column* style (digits with carries and borrows), ending with a boxed answer.",
        f"2. **Base model** (shipped, `exploresft_jax/demo/assets/base`, rebuilt by `scripts/demo.py --pretrain`): "
        f"a random Qwen2 ({recipe.get('layers', '?')} layers, width {recipe.get('hidden', '?')}, digit-level BPE of "
        f"{recipe.get('bpe_vocab', '?')} tokens) pretrained for {recipe.get('steps', '?')} steps on "
        f"{recipe.get('corpus_problems', '?')} problems, mostly in the direct style, "
        f"{100 * recipe.get('bug_rate', float('nan')):.0f}% of whose direct solutions drop carries and borrows.",
        f"3. **Self samples**: {s.self_samples} samples of the base model on each of the {s.teacher_problems} "
        f"teacher problems, labelled by the verifier (correct rate "
        f"{100 * (sel.get('self', {}).get('correct_rate') or 0):.1f}%).",
        f"4. **Scoring and selection**: `scripts/score_ppl.py --condition-on-prompt` on the teacher solutions (one "
        "per style per problem) and the self samples (conditioned on the problem, unlike the release, because "
        f"a solution's numbers are unpredictable without it); `scripts/select_oxa.py` with mu = "
        f"{win.get('mu', float('nan')):.3f}, sigma = {win.get('sigma', float('nan')):.3f} (mu at the 75th "
        f"percentile of the teacher PPLs) picks {sel.get('oxa_positives', {}).get('n', 0)} positives and "
        f"{sel.get('negatives', {}).get('n', 0)} negatives; the baselines get {sel.get('random', {}).get('n', 0)} "
        "teacher solutions drawn uniformly (one per problem).",
        f"5. **Fine-tuning** from the base, every method the same {s.ft_steps} steps of {s.ft_batch} CE sequences "
        "(OXA adds as many UL sequences), each with the learning rate and coefficient its validation sweep chose "
        "(`scripts/demo.py --sweep`, on problems disjoint from the held-out ones): "
        + ", ".join(f"{LABELS[m]} lr {ch[m]['lr']:g}" + (f" coef {ch[m]['coef']:g}" if m != "sft" else "")
                    for m in ("sft", "oxa", "curio", "entropy_reg") if m in ch) + ".",
        (f"6. **GRPO** from each fine-tuned model: {s.grpo_steps} iterations of {s.grpo_prompts} prompts x "
         f"{s.grpo_group} samples, lr {ch.get('grpo', {}).get('lr', float('nan')):g}, verifier rewards."
         if has_rl else "6. **GRPO**: skipped (--no-grpo)."),
        "",
        "## Data selection",
        "",
        "| set | solutions | mean PPL | direct (%) | split (%) | columns (%) |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (("teacher pool", "teacher"), ("OXA positives", "oxa_positives"), ("random selection", "random"),
                      ("OXA negatives", "negatives")):
        st = sel.get(key)
        if not st:
            continue
        m = st["style_mix"]
        ppl = f"{st['ppl_mean']:.3f}" if st["ppl_mean"] is not None else "-"
        lines.append(f"| {name} | {st['n']} | {ppl} | {100 * m['direct']:.0f} | {100 * m['split']:.0f} | "
                     f"{100 * m['columns']:.0f} |")
    if sel.get("teacher_ppl_by_style"):
        lines += ["", "Mean PPL of the teacher solutions by style under the base model: " + ", ".join(
            f"{k} {v:.3f}" for k, v in sel["teacher_ppl_by_style"].items()) + "."]
    lines += ["", f"## Sample outputs (first held-out problem, first sample, seed {seeds[0]})", ""]
    for key, entry in results["runs"].items():
        if not key.endswith(f"/seed{seeds[0]}"):
            continue
        for stage, ev in entry.items():
            if stage in STAGES:
                ex = ev["examples"][0]
                lines.append(f"- **{key.split('/')[0]}, {stage}** ({'correct' if ex['correct'] else 'wrong'}, "
                             f"gold {ex['answer']}): `{ex['response'][:160]}`")
    lines += ["", "## Time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in t.items()]
    lines += ["", "Everything ran on CPU; finished stages are reused when the demo runs again in the same folder.",
              "Files: `results.json` (every number above), `runs/<method>/seed<k>/` (metrics.jsonl, eval.json, "
              "hf_export/, grpo/), `select/` (the OXA set, its report and histogram), `data/`.", ""]
    path = work / "REPORT.md"
    path.write_text("\n".join(lines))
    return path
