"""REPORT.md and its plots from the demo's results (results.json plus the files the stages wrote)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from exploresft_jax.data import word_problems as wp

LABELS = {"base": "base model", "sft": "SFT (random data)", "oxa": "OXA", "curio": "CurioSFT",
          "entropy_reg": "SFT + entropy reg."}
RARE = ("split", "columns")


def _jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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

def _row(evals: list[dict]) -> dict[str, list[float]]:
    """Per-metric values over seeds."""
    out: dict[str, list[float]] = {}
    for e in evals:
        ks = sorted(int(k) for k in e["pass_at_k"])
        for k in ks:
            out.setdefault(f"pass@{k}", []).append(e["pass_at_k"][str(k)])
        out.setdefault("entropy", []).append(e["entropy"])
        out.setdefault("rare", []).append(sum(e["style_mix"].get(s, 0.0) for s in RARE))
        out.setdefault("distinct", []).append(e["distinct_correct_styles"])
    return out


def collect(results: dict) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{stage: {method: {metric: [value per seed]}}} for stages "sft" and "grpo" (the base under "base")."""
    stages: dict = {"base": {"base": _row([results["base"]])}, "sft": {}, "grpo": {}}
    per: dict = {}
    for key, entry in results["runs"].items():
        method = key.split("/")[0]
        for stage in ("sft", "grpo"):
            if stage in entry:
                per.setdefault(stage, {}).setdefault(method, []).append(entry[stage])
    for stage, methods in per.items():
        for method, evals in methods.items():
            stages[stage][method] = _row(evals)
    return stages


def _fmt(vals: list[float], pct: bool = True) -> str:
    scale = 100.0 if pct else 1.0
    v = np.asarray(vals, float) * scale
    if len(v) > 1:
        return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if pct else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"
    return f"{v[0]:.1f}" if pct else f"{v[0]:.3f}"


def table(stages: dict) -> str:
    """The Markdown results table: one row per (method, stage)."""
    ks = sorted({int(m[5:]) for st in stages.values() for row in st.values() for m in row if m.startswith("pass@")})
    show = [k for k in ks if k in (1, 4) or k == ks[-1]]
    head = (["model", "stage"] + [f"Pass@{k} (%)" for k in show]
            + ["token entropy (nats)", "rare styles (%)", "correct styles / problem"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = [("base", "base", "pretrained")]
    for stage, name in (("sft", "fine-tuned"), ("grpo", "+ GRPO")):
        order += [(stage, m, name) for m in LABELS if m in stages.get(stage, {})]
    for stage, method, name in order:
        row = stages[stage][method]
        cells = [LABELS[method], name] + [_fmt(row.get(f"pass@{k}", [float("nan")])) for k in show]
        cells += [_fmt(row["entropy"], pct=False), _fmt(row["rare"]), _fmt(row["distinct"], pct=False)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- plots --------------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pass_at_k(results: dict, out: Path) -> Path:
    plt = _plt()
    stages = [s for s in ("sft", "grpo") if any(s in e for e in results["runs"].values())]
    fig, axes = plt.subplots(1, len(stages), figsize=(5.5 * len(stages), 4), squeeze=False)
    base = results["base"]["pass_at_k"]
    for ax, stage in zip(axes[0], stages):
        ks = sorted(int(k) for k in base)
        ax.plot(ks, [100 * base[str(k)] for k in ks], "k--", label=LABELS["base"])
        for method in LABELS:
            evals = [e[stage] for key, e in results["runs"].items() if key.split("/")[0] == method and stage in e]
            if not evals:
                continue
            vals = np.asarray([[100 * e["pass_at_k"][str(k)] for k in ks] for e in evals])
            ax.plot(ks, vals.mean(0), marker="o", label=LABELS[method])
            if len(evals) > 1:
                ax.fill_between(ks, vals.min(0), vals.max(0), alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (samples per problem)")
        ax.set_ylabel("Pass@k (%) on held-out problems")
        ax.set_title("after fine-tuning" if stage == "sft" else "after fine-tuning + GRPO")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_entropy(results: dict, out: Path) -> Path:
    plt = _plt()
    has_grpo = any("grpo_metrics" in e for e in results["runs"].values())
    fig, axes = plt.subplots(1, 3 if has_grpo else 2, figsize=(16 if has_grpo else 11, 4))
    ax = axes[0]
    for method in LABELS:
        keys = [k for k in results["runs"] if k.split("/")[0] == method]
        if not keys:
            continue
        rows = _jsonl(results["runs"][keys[0]]["train_metrics"])
        ax.plot([r["step"] for r in rows], [r["entropy"] for r in rows], label=LABELS[method])
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("token entropy on training data (nats)")
    ax.set_title(f"fine-tuning (seed {results['seeds'][0]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_grpo:
        ax = axes[1]
        for method in LABELS:
            keys = [k for k in results["runs"] if k.split("/")[0] == method and "grpo_metrics" in results["runs"][k]]
            if not keys:
                continue
            rows = _jsonl(results["runs"][keys[0]]["grpo_metrics"])
            ax.plot([r["step"] for r in rows], [r["rollout_entropy"] for r in rows], marker=".", label=LABELS[method])
        ax.set_xlabel("GRPO iteration")
        ax.set_ylabel("rollout token entropy (nats)")
        ax.set_title(f"GRPO (seed {results['seeds'][0]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    stages = collect(results)
    names, vals, errs = ["base"], [np.mean(stages["base"]["base"]["entropy"])], [0.0]
    for stage, suffix in (("sft", ""), ("grpo", "+GRPO")):
        for method in LABELS:
            if method in stages.get(stage, {}):
                v = stages[stage][method]["entropy"]
                names.append(method + suffix)
                vals.append(float(np.mean(v)))
                errs.append(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
    ax.bar(range(len(names)), vals, yerr=errs, color=["gray"] + ["tab:blue"] * (len(names) - 1))
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("sampled-token entropy (nats)")
    ax.set_title("held-out samples (T = 1)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


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
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# --- the report ---------------------------------------------------------------------------------------------------

def _observations(stages: dict) -> list[str]:
    """Plain statements comparing each method with SFT on the numbers measured (no claim beyond them)."""
    out = []
    for stage, what in (("sft", "after fine-tuning"), ("grpo", "after GRPO")):
        rows = stages.get(stage, {})
        if "sft" not in rows:
            continue
        kmax = max(int(m[5:]) for m in rows["sft"] if m.startswith("pass@"))
        ref = {m: float(np.mean(rows["sft"][m])) for m in ("pass@1", f"pass@{kmax}", "entropy")}
        for method in ("oxa", "curio", "entropy_reg"):
            if method not in rows:
                continue
            r = {m: float(np.mean(rows[method][m])) for m in ref}
            out.append(f"- {what}, {LABELS[method]} vs SFT: Pass@1 {100 * r['pass@1']:.1f}% vs "
                       f"{100 * ref['pass@1']:.1f}% ({100 * (r['pass@1'] - ref['pass@1']):+.1f}), Pass@{kmax} "
                       f"{100 * r[f'pass@{kmax}']:.1f}% vs {100 * ref[f'pass@{kmax}']:.1f}% "
                       f"({100 * (r[f'pass@{kmax}'] - ref[f'pass@{kmax}']):+.1f}), sampled-token entropy "
                       f"{r['entropy']:.3f} vs {ref['entropy']:.3f} nats.")
    return out


def write_report(work: Path, results: dict, settings) -> Path:
    """Writes passk.png, entropy.png, ppl_hist.png and REPORT.md under `work`; returns REPORT.md's path."""
    work = Path(work)
    plot_pass_at_k(results, work / "passk.png")
    plot_entropy(results, work / "entropy.png")
    plot_ppl(work, work / "ppl_hist.png")
    stages = collect(results)
    sel = results.get("selection", {})
    s = settings
    seeds = results["seeds"]
    win = results.get("window", {})
    t = results.get("timings_s", {})
    lines = [
        "# exploresft_jax demo: SFT, OXA, CurioSFT and entropy-regularised SFT on a toy verifiable task",
        "",
        f"Seeds: {', '.join(map(str, seeds))} (mean ± sample std over seeds where more than one). The base model "
        "and the teacher data are shared by all seeds; a seed drives the random selection, the data order, the "
        "methods' randomness and the evaluation samples. Base pretraining uses seed 0, the base model's own "
        "samples seed 12345.",
        "",
        "## Results",
        "",
        f"Held-out problems: {s.eval_problems}, {s.eval_samples} samples each at temperature {s.eval_temperature}; "
        "Pass@k is the unbiased estimator, *token entropy* the mean entropy of the sampling distribution over the "
        "generated tokens, *rare styles* the share of samples written in the split or column style, *correct "
        "styles / problem* the number of distinct styles among a problem's correct samples.",
        "",
        table(stages),
        "",
        *_observations(stages),
        "",
        "![pass@k](passk.png)",
        "",
        "![entropy](entropy.png)",
        "",
        "![perplexity of the selected data](ppl_hist.png)",
        "",
        "## What ran",
        "",
        f"1. **Task** (`exploresft_jax.data.word_problems`): two-step add/subtract word problems (start 20-99, "
        "steps of 2-9), solved in the *direct* style (common), the *split* style (through the round ten) or the "
        "*column* style (digits with carries and borrows), ending with a boxed answer. The base corpus "
        f"({s.base_problems} problems) is mostly direct, and {100 * s.base_bug_rate:.0f}% of its direct solutions "
        "drop carries and borrows.",
        f"2. **Base model**: a random Qwen2 ({s.layers} layers, width {s.hidden}, digit-level BPE of "
        f"{s.bpe_vocab} tokens) pretrained for {s.base_steps} steps on the base corpus.",
        f"3. **Self samples**: {s.self_samples} samples of the base model on each of the {s.teacher_problems} "
        f"teacher problems, labelled by the verifier (correct rate "
        f"{100 * (sel.get('self', {}).get('correct_rate') or 0):.1f}%).",
        f"4. **Scoring and selection**: `scripts/score_ppl.py --condition-on-prompt` on the teacher solutions (one "
        f"per style per problem) and the self samples (conditioned on the problem, unlike the release, because "
        f"a solution's numbers are unpredictable without it); `scripts/select_oxa.py` with mu = {win.get('mu', float('nan')):.3f}, sigma = "
        f"{win.get('sigma', float('nan')):.3f} over [{win.get('lo', float('nan')):.3f}, "
        f"{win.get('hi', float('nan')):.3f}] (mu at the 75th percentile of the teacher PPLs: the release centres "
        f"the Gaussian above the bulk too) picks {sel.get('oxa_positives', {}).get('n', 0)} positives and "
        f"{sel.get('negatives', {}).get('n', 0)} negatives; the baselines get {sel.get('random', {}).get('n', 0)} "
        "teacher solutions drawn uniformly (one per problem).",
        f"5. **Fine-tuning** from the base, every method with the same {s.ft_steps} steps of {s.ft_batch} CE "
        f"sequences at lr {s.ft_lr} (OXA adds {s.ft_batch} UL sequences per step, ul_weight {s.ul_weight}; "
        f"entropy regularisation coef {s.entropy_coef}; CurioSFT with the base config's settings).",
        (f"6. **GRPO** from each fine-tuned model: {s.grpo_steps} iterations of {s.grpo_prompts} prompts x "
         f"{s.grpo_group} samples, lr {s.grpo_lr}, verifier rewards. Short on purpose: read it as a smoke test "
         "of how each start responds, not as a converged RL result."
         if any("grpo" in e for e in results["runs"].values()) else "6. **GRPO**: skipped (--no-grpo)."),
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
    lines += ["", "## Sample outputs (first held-out problems, first sample)", ""]
    for stage_name, ev in [("base", results["base"])] + [
            (k, e["sft"]) for k, e in results["runs"].items() if k.endswith(f"seed{seeds[0]}")]:
        for ex in ev.get("examples", [])[:1]:
            lines.append(f"- **{stage_name}** ({'correct' if ex['correct'] else 'wrong'}, gold {ex['answer']}): "
                         f"`{ex['response'][:160]}`")
    lines += ["", "## Time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in t.items()]
    lines += ["", "Everything ran on CPU; finished stages are reused when the demo runs again in the same folder.",
              "Files: `results.json` (every number above), `runs/<method>/seed<k>/` (metrics.jsonl, eval.json, "
              "hf_export/, grpo/), `select/` (the OXA set, its report and histogram), `data/`.", ""]
    path = work / "REPORT.md"
    path.write_text("\n".join(lines))
    return path
