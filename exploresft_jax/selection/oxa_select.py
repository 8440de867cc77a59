"""OXA data selection from perplexity-scored records, as the OXA release prepares its data.

Positives (CE): verifier-correct teacher responses with PPL in [lo, hi], placed in `num_bins` equal bins whose
target counts follow a Gaussian N(mu, sigma) over the bin centres (largest-remainder rounding to `n_total`).
Bins are filled in ascending PPL order; within a bin, candidates are taken longest first (random tie-breaks);
each query contributes at most one response overall. A bin with too few candidates is left short (its shortfall
is reported, not moved to other bins).

Negatives (UL): verifier-incorrect self-generated responses with PPL >= `ppl_floor` (lower PPLs are degenerate,
repetitive text); the lowest-PPL one per query; then the `n_total` lowest overall.

`select_files` runs both on perplexity-scored JSONL files and writes the mixed training set, a JSON report and a
histogram (what scripts/select_oxa.py runs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def gaussian_bin_targets(n_total: int, *, lo: float = 1.0, hi: float = 5.0, num_bins: int = 80, mu: float = 2.5,
                         sigma: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(bin edges [num_bins + 1], integer target counts [num_bins]) summing exactly to n_total."""
    edges = np.linspace(lo, hi, num_bins + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    density = np.exp(-0.5 * ((centres - mu) / sigma) ** 2)
    exact = n_total * density / density.sum()
    counts = np.floor(exact).astype(np.int64)
    remainder = n_total - int(counts.sum())
    if remainder > 0:  # largest remainder: the bins with the largest fractional parts get one more
        order = np.argsort(-(exact - counts), kind="stable")[:remainder]
        counts[order] += 1
    return edges, counts


@dataclasses.dataclass
class SelectionReport:
    edges: list[float]
    targets: list[int]
    selected: list[int]
    candidates_in_range: int
    num_selected: int

    @property
    def shortfall(self) -> int:
        return int(sum(max(0, t - s) for t, s in zip(self.targets, self.selected)))


def _length(rec: dict, length_field: str) -> float:
    if length_field in rec and rec[length_field] is not None:
        return float(rec[length_field])
    return float(len(rec.get("response", "")))


def select_positives(records: Sequence[dict], n_total: int, *, lo: float = 1.0, hi: float = 5.0, num_bins: int = 80,
                     mu: float = 2.5, sigma: float = 0.25, seed: int = 42, query_key: str = "prompt",
                     ppl_key: str = "ppl", length_key: str = "num_tokens", prioritize_long: bool = True
                     ) -> tuple[list[dict], SelectionReport]:
    """Truncated-Gaussian PPL selection (see the module docstring). Records must already be verified correct."""
    edges, targets = gaussian_bin_targets(n_total, lo=lo, hi=hi, num_bins=num_bins, mu=mu, sigma=sigma)
    rng = random.Random(seed)
    bins: list[list[dict]] = [[] for _ in range(num_bins)]
    in_range = 0
    for rec in records:
        ppl = rec.get(ppl_key)
        if ppl is None or not math.isfinite(ppl) or not lo <= ppl <= hi:
            continue
        in_range += 1
        b = min(num_bins - 1, int(np.searchsorted(edges, ppl, side="right")) - 1)
        bins[b].append(rec)
    used_queries: set[str] = set()
    chosen, selected = [], []
    for b in range(num_bins):  # ascending PPL: low-PPL bins claim a query first
        cands = bins[b]
        keyed = [(-_length(r, length_key) if prioritize_long else 0.0, rng.random(), i) for i, r in enumerate(cands)]
        keyed.sort()
        taken = 0
        for _, _, i in keyed:
            if taken >= targets[b]:
                break
            q = _query_id(cands[i], query_key)
            if q in used_queries:
                continue
            used_queries.add(q)
            chosen.append(cands[i])
            taken += 1
        selected.append(taken)
    report = SelectionReport(edges=edges.tolist(), targets=targets.tolist(), selected=selected,
                             candidates_in_range=in_range, num_selected=len(chosen))
    return chosen, report


def select_negatives(records: Sequence[dict], n_total: int, *, ppl_floor: float = 1.2, query_key: str = "prompt",
                     ppl_key: str = "ppl", max_tokens: int = 25000, length_key: str = "num_tokens") -> list[dict]:
    """Lowest-PPL incorrect response per query, then the n_total lowest overall, among responses with
    PPL >= ppl_floor and at most `max_tokens` tokens (`length_key`, score_ppl's count; the release drops
    negatives over 25k; <= 0 keeps every length)."""
    best: dict[str, dict] = {}
    for rec in records:
        ppl = rec.get(ppl_key)
        if ppl is None or not math.isfinite(ppl) or ppl < ppl_floor:
            continue
        if max_tokens > 0 and (rec.get(length_key) or 0) > max_tokens:  # records without a count are kept
            continue
        q = _query_id(rec, query_key)
        if q not in best or ppl < best[q][ppl_key]:
            best[q] = rec
    return sorted(best.values(), key=lambda r: r[ppl_key])[:n_total]


def _query_id(rec: dict, key: str) -> str:
    q = rec.get(key)
    return q if isinstance(q, str) else repr(q)


def plot_selection(report: SelectionReport, positives: Sequence[dict], negatives: Sequence[dict], out_png,
                   ppl_key: str = "ppl") -> None:
    """PNG: realised positive PPL histogram against the Gaussian targets, and the negatives' PPL histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(report.edges)
    centres = 0.5 * (edges[:-1] + edges[1:])
    width = edges[1] - edges[0]
    fig, axes = plt.subplots(1, 2 if negatives else 1, figsize=(11 if negatives else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    ax.bar(centres, report.selected, width=width * 0.9, label=f"selected ({report.num_selected})", color="tab:blue")
    ax.plot(centres, report.targets, color="tab:red", label=f"target (shortfall {report.shortfall})")
    ax.set_xlabel("perplexity under the base model")
    ax.set_ylabel("responses")
    ax.set_title("CE positives: verified teacher responses")
    ax.legend()
    if negatives:
        ax = axes[0][1]
        ax.hist([r[ppl_key] for r in negatives], bins=40, color="tab:orange")
        ax.set_xlabel("perplexity under the base model")
        ax.set_title(f"UL negatives: confident wrong responses ({len(negatives)})")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def load_scored(path, correct_field: str = "correct") -> list[dict]:
    """Records of a perplexity-scored JSONL (`score_file`'s output), each with a boolean `correct_field`.

    A record needs "response" and "ppl", and either `correct_field` (true / false) or an "answer" its response is
    verified against (the verifier's verdict then fills `correct_field`). Raises RecordError (a ValueError naming
    the file, line and field) otherwise.
    """
    from exploresft_jax.data.jsonl import RecordError, iter_jsonl

    rows, to_verify = [], []
    for line, rec in iter_jsonl(path):
        where = f"{path}:{line}"
        for field in ("response", "ppl"):
            if field not in rec:
                raise RecordError(f"{where}: missing field {field!r} (score the file with score_ppl.py first)")
        if correct_field in rec:
            if not isinstance(rec[correct_field], bool):
                raise RecordError(f"{where}: field {correct_field!r} must be true or false")
        elif "answer" in rec:
            to_verify.append(len(rows))
        else:
            raise RecordError(f"{where}: needs {correct_field!r} (bool) or 'answer' to decide correctness")
        rows.append(rec)
    if to_verify:
        from exploresft_jax.rewards import check_batch

        verdicts = check_batch([str(rows[i]["answer"]) for i in to_verify], [rows[i]["response"] for i in to_verify])
        for i, v in zip(to_verify, verdicts):
            rows[i] = {**rows[i], correct_field: v.status == "correct"}
    return rows


def select_files(teacher, output, *, self_file=None, num_positives: int = 50000, num_negatives: int = 50000,
                 mu: float = 2.5, sigma: float = 0.25, ppl_min: float = 1.0, ppl_max: float = 5.0, bins: int = 80,
                 neg_ppl_floor: float = 1.2, neg_max_tokens: int = 25000, seed: int = 42,
                 correct_field: str = "correct", query_field: str = "prompt", no_prioritize_long: bool = False,
                 histogram=None) -> dict:
    """An OXA training set from perplexity-scored files (what scripts/select_oxa.py runs; its flags are these
    keyword arguments).

    teacher / self_file: JSONL files read by `load_scored` (self_file optional: without it, no negatives).
    Positives: the correct teacher records, chosen by `select_positives` (`num_positives` in `bins` equal PPL bins
    over [ppl_min, ppl_max], Gaussian targets N(mu, sigma) in PPL units, one response per `query_field`, longest
    first unless `no_prioritize_long`, ties broken by `seed`). Negatives: the incorrect self-generated records,
    chosen by `select_negatives` (at most `num_negatives`, PPL >= neg_ppl_floor, at most neg_max_tokens scored
    tokens; 0 keeps every length).
    Writes `output` (JSONL: positives with "loss_type": "ce", then negatives with "loss_type": "ul"), a JSON report
    beside it (output with suffix .report.json) and a PNG histogram (`histogram`, default: output with suffix
    .png). Returns the report's dict (positives, negatives, correct_teacher, in_ppl_range, target, shortfall,
    bins) plus "output" and "histogram", the paths written.
    """
    from exploresft_jax.data.jsonl import write_jsonl

    good = [r for r in load_scored(teacher, correct_field) if r[correct_field]]
    positives, report = select_positives(
        good, num_positives, lo=ppl_min, hi=ppl_max, num_bins=bins, mu=mu, sigma=sigma, seed=seed,
        query_key=query_field, prioritize_long=not no_prioritize_long)
    negatives = []
    if self_file:
        wrong = [r for r in load_scored(self_file, correct_field) if not r[correct_field]]
        negatives = select_negatives(wrong, num_negatives, ppl_floor=neg_ppl_floor, query_key=query_field,
                                     max_tokens=neg_max_tokens)
    out = write_jsonl(output, [{**r, "loss_type": "ce"} for r in positives] +
                      [{**r, "loss_type": "ul"} for r in negatives])
    summary = {"positives": len(positives), "negatives": len(negatives), "correct_teacher": len(good),
               "in_ppl_range": report.candidates_in_range, "target": num_positives,
               "shortfall": report.shortfall, "bins": {"edges": report.edges, "target": report.targets,
                                                       "selected": report.selected}}
    Path(out).with_suffix(".report.json").write_text(json.dumps(summary, indent=1) + "\n")
    png = histogram or str(Path(out).with_suffix(".png"))
    plot_selection(report, positives, negatives, png)
    print(f"selected {len(positives)} positives (target {num_positives}, shortfall {report.shortfall}) and "
          f"{len(negatives)} negatives -> {out}; histogram {png}", file=sys.stderr)
    return {**summary, "output": out, "histogram": png}
