"""Scoring of math generations and their reports: Pass@1, Pass@k, any-correct@n, lengths, entropy, no-answer rate
per benchmark (what scripts/evaluate.py runs).

`evaluate` scores existing generations files (the generate.py output contract: `read_generations`) or samples
them first from a model (`generate_completions`, through `exploresft_jax.sampling.files.generate_records`), verifies
every completion (`score`) and writes results.json, results.md, pass_at_k.png and samples.jsonl
(`write_reports`). Importing this module does not import JAX; generation imports it when it runs.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from exploresft_jax.data.jsonl import RecordError, iter_jsonl

from .benchmarks import BENCHMARKS, BenchmarkError, load_benchmark, problem_from_record
from .metrics import any_correct_at_n, avg_at_n, default_ks, pass_at_k_curve

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
def generate_completions(problems_by_benchmark, *, model, n: int, temperature: float, top_p: float,
                         max_new_tokens: int, seed: int, dtype: str | None, attention: str,
                         system: str | None) -> dict[str, list[dict]]:
    """Samples `n` completions per problem with `sampling.files.generate_records` (the problem text plus
    PROMPT_SUFFIX, chat template; the other sampling settings are generate_file's defaults); returns the same
    structure as :func:`read_generations`. The sampler module must be importable. A failed generation (a bad
    model folder, a prompt the template refuses) is raised as InputError with its reason."""
    import importlib.util

    try:
        found = importlib.util.find_spec("exploresft_jax.sampling") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise InputError("--model: generation needs the sampler module exploresft_jax.sampling, which is not "
                         "importable; score existing generations with --generations instead")
    from exploresft_jax.sampling.files import generate_records

    out: dict[str, list[dict]] = {}
    for name, problems in problems_by_benchmark.items():
        records = [(f"{name}[{p.index}]", {"prompt": p.problem + PROMPT_SUFFIX, "answer": p.answer, "index": p.index})
                   for p in problems]
        print(f"[evaluate] generating {name}: {len(problems)} problems x {n} samples", file=sys.stderr)
        try:
            gens, _ = generate_records(str(model), records, n=n, temperature=temperature, top_p=top_p,
                                       max_new_tokens=max_new_tokens, seed=seed, dtype=dtype, attention=attention,
                                       system=system)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise InputError(f"--model: generation failed for {name}: {e}") from None
        # the loader's gold answer (Problem.answer), as read_generations gives it for a generations file
        out[name] = [{"gold": p.answer, "problem": p.problem, "index": p.index,
                      "completions": _check_completions(rec["completions"], where)}
                     for (where, _), rec, p in zip(records, gens, problems)]
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
    """PNG at `path`: Pass@k (%) against k (log2 axis) per benchmark, and their average when there are several."""
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
    """Writes results.json, results.md, samples.jsonl and pass_at_k.png to `out_dir` from :func:`score`'s output;
    returns the results.json dict ({"config", "benchmarks", "average"})."""
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
def evaluate(*, output_dir, generations: Sequence[str] | None = None, model=None, benchmark: str | None = None,
             benchmarks: str | Sequence[str] = ",".join(BENCHMARKS[:6]), data_dir=None, limit: int | None = None,
             n: int = 16, temperature: float = 0.6, top_p: float = 0.95, max_new_tokens: int = 4096, seed: int = 0,
             dtype: str | None = None, attention: str = "auto", system: str | None = None,
             workers: int = os.cpu_count() or 1, timeout: float = 5.0, require_think_close: bool = False,
             extraction: str = "permissive", no_progress: bool = False) -> dict:
    """Scores math generations and writes the reports (what scripts/evaluate.py runs; its flags are these keyword
    arguments).

    The generations come from exactly one of:
      generations: JSONL file(s) in the generate.py output contract (see :func:`read_generations`); a record's
        benchmark is its "benchmark" field, else `benchmark`, else the file name;
      model: a HuggingFace-format model folder sampled with :func:`generate_completions` on `benchmarks` (names,
        or one comma-separated string) loaded from `data_dir` (default: $EXPLORESFT_BENCHMARKS), the first
        `limit` problems of each (None: all): `n` samples per problem, temperature, top_p, at most
        max_new_tokens tokens, seed, dtype, attention and system as in `sampling.files.generate_file`.
    Verification: `workers` processes, `timeout` seconds per completion, `require_think_close` (the answer must
    follow </think>), `extraction` ("permissive", "standard" or "boxed_only"); no_progress hides the progress bar.
    Writes to `output_dir`: results.json ({"config": these arguments less no_progress, "benchmarks": metrics per
    benchmark, "average": their unweighted mean}; rates are fractions, lengths in tokens, entropies in nats),
    results.md (the table, in percent), pass_at_k.png and samples.jsonl (one verdict per completion); prints the
    table on stdout. Returns the results.json dict. Raises InputError (a one-line message naming the file, line
    and field) on bad input, before anything is written.
    """
    if (generations is None) == (model is None):
        raise ValueError("give exactly one of generations and model")
    if n < 1 or workers < 1 or timeout <= 0:
        raise ValueError("n and workers must be >= 1 and timeout > 0")
    if isinstance(generations, (str, os.PathLike)):
        generations = [generations]
    if data_dir is None:
        data_dir = os.environ.get("EXPLORESFT_BENCHMARKS")
    config = {"generations": None if generations is None else [str(g) for g in generations],
              "model": None if model is None else str(model), "benchmark": benchmark, "benchmarks": benchmarks,
              "data_dir": None if data_dir is None else str(data_dir), "limit": limit, "n": n,
              "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed,
              "dtype": dtype, "attention": attention, "system": system, "output_dir": str(output_dir),
              "workers": workers, "timeout": timeout, "require_think_close": require_think_close,
              "extraction": extraction}
    if generations is not None:
        groups: dict[str, list[dict]] = {}
        for path in generations:
            for name, recs in read_generations(str(path), benchmark).items():
                groups.setdefault(name, []).extend(recs)
    else:
        names = benchmarks.split(",") if isinstance(benchmarks, str) else list(benchmarks)
        names = [b.strip() for b in names if b.strip()]
        try:
            problems = {b: load_benchmark(b, data_dir, limit=limit) for b in names}
        except BenchmarkError as e:
            raise InputError(str(e)) from None
        groups = generate_completions(problems, model=model, n=n, temperature=temperature, top_p=top_p,
                                      max_new_tokens=max_new_tokens, seed=seed, dtype=dtype, attention=attention,
                                      system=system)
    metrics, rows = score(groups, workers=workers, timeout=timeout, require_think_close=require_think_close,
                          progress=not no_progress, extraction=extraction)
    result = write_reports(Path(output_dir), metrics, rows, config)
    print(markdown_table(metrics, result["average"]), end="")
    print(f"[evaluate] wrote {output_dir}/results.json, results.md, pass_at_k.png, samples.jsonl", file=sys.stderr)
    return result
