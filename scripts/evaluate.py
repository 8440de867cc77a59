#!/usr/bin/env python
"""Score math generations: Pass@1, Pass@k, any-correct@n, lengths, entropy, no-answer rate per benchmark.

Score an existing JSONL of generations (the generate.py output contract):

    python scripts/evaluate.py --generations gens.jsonl --benchmark aime24 --output-dir out/

Generate with a model, then score (needs the sampler; OXA protocol defaults: T = 0.6, top-p = 0.95):

    python scripts/evaluate.py --model DIR --benchmarks aime24,aime25,amc23,math500,minerva_math,olympiadbench \\
        --data-dir ../shared/data/benchmarks --n 16 --max-new-tokens 4096 --output-dir out/

Each generations record holds the benchmark's own fields (or just "answer") plus
"completions": [{"text", "num_tokens", "logprob", "finish_reason"}, ...] ("entropy", the mean per-token entropy
of a completion, is optional; without it the table shows "-", and results.json also gives mean_token_nll,
-logprob/num_tokens, a sampled estimate of the same quantity). The benchmark of a record is its "benchmark" field, else --benchmark, else the
file name. Writes to --output-dir: results.json, results.md (per-benchmark table and the unweighted average over
benchmarks, as papers report it), pass_at_k.png, samples.jsonl (one line per completion with its verdict).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exploresft_jax.data.jsonl import RecordError, iter_jsonl  # noqa: E402
from exploresft_jax.eval import (BENCHMARKS, BenchmarkError, any_correct_at_n, avg_at_n,  # noqa: E402
                                 default_ks, load_benchmark, pass_at_k_curve, problem_from_record)

PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


class InputError(Exception):
    """Bad input; the message is one line naming the file, line and field."""


# ----------------------------------------------------------------------------------------------------------
# Reading generations
# ----------------------------------------------------------------------------------------------------------
def _check_completions(comps, where: str) -> list[dict]:
    if not isinstance(comps, list) or not comps:
        raise InputError(f"{where}: field 'completions' must be a non-empty list")
    out = []
    for j, c in enumerate(comps):
        if isinstance(c, str):  # a bare text is accepted as a completion without statistics
            c = {"text": c}
        if not isinstance(c, dict) or not isinstance(c.get("text"), str):
            raise InputError(f"{where}: field 'completions[{j}].text' must be a string")
        for key in ("num_tokens", "logprob", "entropy"):
            v = c.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise InputError(f"{where}: field 'completions[{j}].{key}' must be a number")
        fr = c.get("finish_reason")
        if fr is not None and fr not in ("stop", "length"):
            raise InputError(f"{where}: field 'completions[{j}].finish_reason' must be 'stop' or 'length'")
        out.append(c)
    return out


def read_generations(path: str, benchmark: str | None) -> dict[str, list[dict]]:
    """``{benchmark: [{"gold", "problem", "index", "completions"}, ...]}`` from a generations JSONL."""
    groups: dict[str, list[dict]] = {}
    p = Path(path)
    try:
        records = list(iter_jsonl(p))
    except (RecordError, FileNotFoundError) as e:
        raise InputError(str(e)) from None
    for lineno, rec in records:
        where = f"{path}:{lineno}"
        name = rec.get("benchmark") or benchmark or p.stem
        comps = _check_completions(rec.get("completions"), where)
        if name in BENCHMARKS and not ("answer" in rec and name not in ("gsm8k", "olympiadbench")):
            # The benchmark's own fields: use its loader's gold-answer rules.
            rec2 = dict(rec)
            rec2.setdefault("problem", rec.get("prompt") if isinstance(rec.get("prompt"), str) else "?")
            try:
                gold = problem_from_record(name, rec2, 0, where).answer
            except BenchmarkError as e:
                raise InputError(str(e)) from None
        else:
            ans = rec.get("answer")
            if ans is None or (isinstance(ans, str) and not ans.strip()):
                raise InputError(f"{where}: field 'answer' is missing or empty")
            gold = ans
        problem = rec.get("problem") or rec.get("question") or rec.get("prompt")
        group = groups.setdefault(name, [])
        group.append({"gold": gold, "problem": problem if isinstance(problem, str) else None,
                      "index": rec.get("index", len(group)), "completions": comps})
    if not groups:
        raise InputError(f"{path}: no records")
    return groups


# ----------------------------------------------------------------------------------------------------------
# Generation (plugs in the sampler)
# ----------------------------------------------------------------------------------------------------------
def generate_completions(args, problems_by_benchmark) -> dict[str, list[dict]]:
    """Sample ``args.n`` completions per problem with ``scripts/generate.py``; returns the same structure as
    :func:`read_generations`. The sampler module must be importable."""
    import importlib.util

    try:
        found = importlib.util.find_spec("exploresft_jax.sampling") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise InputError("--model: generation needs the sampler module exploresft_jax.sampling, which is not "
                         "importable; score existing generations with --generations instead")
    generate = Path(__file__).resolve().parent / "generate.py"
    out: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, problems in problems_by_benchmark.items():
            prompts = Path(tmp) / f"{name}.prompts.jsonl"
            gens = Path(tmp) / f"{name}.gens.jsonl"
            with open(prompts, "w", encoding="utf-8") as f:
                for p in problems:
                    f.write(json.dumps({"prompt": p.problem + PROMPT_SUFFIX, "answer": p.answer,
                                        "index": p.index}) + "\n")
            cmd = [sys.executable, str(generate), "--model", args.model, "--input", str(prompts), "--output",
                   str(gens), "--n", str(args.n), "--temperature", str(args.temperature), "--top-p",
                   str(args.top_p), "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed)]
            if args.dtype:
                cmd += ["--dtype", args.dtype]
            cmd += ["--attention", args.attention]
            if args.system is not None:
                cmd += ["--system", args.system]
            print(f"[evaluate] generating {name}: {len(problems)} problems x {args.n} samples", file=sys.stderr)
            if subprocess.run(cmd).returncode != 0:
                raise InputError(f"--model: generation failed for {name} (see the messages above)")
            groups = read_generations(str(gens), name)
            out[name] = groups[name]
            for rec, p in zip(out[name], problems):
                rec["problem"] = p.problem
    return out


# ----------------------------------------------------------------------------------------------------------
# Scoring and reports
# ----------------------------------------------------------------------------------------------------------
def _mean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(sum(xs) / len(xs)) if xs else None


def score(groups: dict[str, list[dict]], *, workers: int, timeout: float, require_think_close: bool,
          progress: bool = True, extraction: str = "permissive") -> tuple[dict, list[dict]]:
    """Verify every completion; returns (per-benchmark metrics, per-sample rows)."""
    from exploresft_jax.rewards import VerifierConfig, VerifierPool

    golds, texts, keys = [], [], []
    for name, recs in groups.items():
        for i, rec in enumerate(recs):
            for j, c in enumerate(rec["completions"]):
                golds.append(rec["gold"])
                texts.append(c["text"])
                keys.append((name, i, j))
    cfg = VerifierConfig(timeout=timeout, require_think_close=require_think_close, extraction=extraction)
    with VerifierPool(workers, cfg) as pool:
        verdicts = pool.check_batch(golds, texts, progress=progress)
    by_key = dict(zip(keys, verdicts))
    metrics: dict[str, dict] = {}
    rows: list[dict] = []
    for name, recs in groups.items():
        correct, lengths, entropies, nlls, statuses, truncated = [], [], [], [], [], []
        for i, rec in enumerate(recs):
            row_correct = []
            for j, c in enumerate(rec["completions"]):
                v = by_key[(name, i, j)]
                row_correct.append(v.correct)
                statuses.append(v.status)
                nt = c.get("num_tokens")
                lengths.append(float(nt) if nt is not None else None)
                if c.get("entropy") is not None:
                    entropies.append(float(c["entropy"]))
                if c.get("logprob") is not None and nt:
                    # -logprob per token of sampled tokens: a Monte Carlo estimate of the sampling entropy.
                    nlls.append(-float(c["logprob"]) / float(nt))
                truncated.append(c.get("finish_reason") == "length")
                rows.append({"benchmark": name, "index": rec["index"], "sample": j, "gold": str(rec["gold"]),
                             "answer": v.answer, "status": v.status, "reason": v.reason,
                             "num_tokens": nt, "finish_reason": c.get("finish_reason")})
            correct.append(row_correct)
        n_min = min(len(r) for r in correct)
        curve = pass_at_k_curve(correct, default_ks(n_min))
        total = len(statuses)
        metrics[name] = {
            "problems": len(recs), "n": n_min, "samples": total,
            "pass@1": avg_at_n(correct),
            "pass@k": {str(k): v for k, v in curve.items()},
            "any_correct@n": any_correct_at_n(correct),
            "mean_response_tokens": _mean(lengths),
            "mean_entropy": _mean(entropies) if entropies else None,
            "mean_token_nll": _mean(nlls) if nlls else None,
            "no_answer_rate": statuses.count("no_answer") / total,
            "timeout_rate": statuses.count("timeout") / total,
            "parse_error_rate": statuses.count("parse_error") / total,
            "truncated_rate": sum(truncated) / total,
        }
    return metrics, rows


def average(metrics: dict[str, dict]) -> dict:
    """Unweighted mean over benchmarks (each benchmark counts once, as papers report it)."""
    ms = list(metrics.values())
    common_ks = set.intersection(*(set(m["pass@k"]) for m in ms)) if ms else set()
    out = {"benchmarks": len(ms)}
    for key in ("pass@1", "any_correct@n", "mean_response_tokens", "mean_entropy", "mean_token_nll",
                "no_answer_rate",
                "timeout_rate", "parse_error_rate", "truncated_rate"):
        out[key] = _mean([m[key] for m in ms])
    out["pass@k"] = {k: _mean([m["pass@k"][k] for m in ms]) for k in sorted(common_ks, key=int)}
    return out


def _fmt(v, pct=True):
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.1f}" if v >= 10 else f"{v:.3f}"


def markdown_table(metrics: dict[str, dict], avg: dict) -> str:
    """Markdown table: one row per benchmark plus the average; percentages for the rates."""
    ks = sorted({k for m in metrics.values() for k in m["pass@k"] if k != "1"}, key=int)
    head = (["benchmark", "problems", "n", "Pass@1"] + [f"Pass@{k}" for k in ks]
            + ["any-correct@n", "mean tokens", "mean entropy", "no-answer %"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, m, problems, n):
        cells = [name, str(problems), str(n), _fmt(m["pass@1"])]
        cells += [_fmt(m["pass@k"].get(k)) for k in ks]
        cells += [_fmt(m["any_correct@n"]), _fmt(m["mean_response_tokens"], False), _fmt(m["mean_entropy"], False),
                  _fmt(m["no_answer_rate"])]
        return "| " + " | ".join(cells) + " |"

    for name, m in metrics.items():
        lines.append(row(name, m, m["problems"], m["n"]))
    if len(metrics) > 1:
        lines.append(row("**average**", avg, "-", "-"))
    return "\n".join(lines) + "\n"


def plot(metrics: dict[str, dict], avg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, m in metrics.items():
        ks = sorted(m["pass@k"], key=int)
        ax.plot([int(k) for k in ks], [100 * m["pass@k"][k] for k in ks], marker="o", label=name)
    if len(metrics) > 1 and avg["pass@k"]:
        ks = sorted(avg["pass@k"], key=int)
        ax.plot([int(k) for k in ks], [100 * avg["pass@k"][k] for k in ks], "k--", marker="s", label="average")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("Pass@k (%)")
    ax.set_title("Pass@k (unbiased estimator)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(out_dir: Path, metrics, rows, config: dict) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    avg = average(metrics)
    result = {"config": config, "benchmarks": metrics, "average": avg}
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown_table(metrics, avg)
    if config.get("extraction"):
        # Scores depend on how answers are found; say which chain produced them.
        md += f"\nVerifier answer extraction: `{config['extraction']}`.\n"
    (out_dir / "results.md").write_text(md)
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    plot(metrics, avg, out_dir / "pass_at_k.png")
    return result


# ----------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--generations", nargs="+", metavar="FILE", help="JSONL file(s) of generations to score")
    src.add_argument("--model", help="model folder: generate with the sampler, then score")
    p.add_argument("--benchmark", default=None, help="benchmark of records without a 'benchmark' field")
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS[:6]),
                   help="comma-separated benchmarks to generate for (with --model)")
    p.add_argument("--data-dir", default=os.environ.get("EXPLORESFT_BENCHMARKS"),
                   help="folder with <benchmark>/test.jsonl (default: $EXPLORESFT_BENCHMARKS)")
    p.add_argument("--limit", type=int, default=None, help="first N problems per benchmark (with --model)")
    p.add_argument("--n", type=int, default=16, help="samples per problem (with --model; default 16)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6, OXA)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus mass (default 0.95, OXA)")
    p.add_argument("--max-new-tokens", type=int, default=4096, help="tokens per sample at most (default 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--attention", choices=["auto", "splash", "cudnn", "blockwise", "dense"], default="auto",
                   help="attention backend for --model generation (see generate.py)")
    p.add_argument("--system", default=None,
                   help="system turn for --model generation: default (the template's own) | none | a text")
    p.add_argument("--output-dir", required=True, help="folder for results.json/.md, pass_at_k.png, samples.jsonl")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="verifier processes")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per verification (default 5)")
    p.add_argument("--require-think-close", action="store_true", help="the answer must come after </think>")
    p.add_argument("--extraction", choices=["permissive", "standard", "boxed_only"], default="permissive",
                   help="how the verifier finds the answer: permissive (default: box, answer phrases, last math, "
                        "closing number), standard (box, bare expression, 'the answer is'), boxed_only")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.n < 1 or args.workers < 1 or args.timeout <= 0:
        p.error("--n and --workers must be >= 1 and --timeout > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.generations:
            groups: dict[str, list[dict]] = {}
            for path in args.generations:
                for name, recs in read_generations(path, args.benchmark).items():
                    groups.setdefault(name, []).extend(recs)
        else:
            names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
            try:
                problems = {n: load_benchmark(n, args.data_dir, limit=args.limit) for n in names}
            except BenchmarkError as e:
                raise InputError(str(e)) from None
            groups = generate_completions(args, problems)
        metrics, rows = score(groups, workers=args.workers, timeout=args.timeout,
                              require_think_close=args.require_think_close, progress=not args.no_progress,
                              extraction=args.extraction)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = {k: v for k, v in vars(args).items() if k not in ("no_progress",)}
    result = write_reports(Path(args.output_dir), metrics, rows, config)
    print(markdown_table(metrics, result["average"]), end="")
    print(f"[evaluate] wrote {args.output_dir}/results.json, results.md, pass_at_k.png, samples.jsonl",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
