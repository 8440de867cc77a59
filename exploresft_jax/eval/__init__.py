"""Evaluation: pass@k estimators, benchmark loaders, scoring of generations and reports.

Light on purpose: importing this package does not import JAX.
"""

from .benchmarks import (
    BENCHMARKS,
    SIX_BENCHMARKS,
    BenchmarkError,
    BenchmarkProblem,
    download_benchmark,
    load_benchmark,
    load_benchmarks,
    problem_from_record,
)
from .metrics import (
    any_correct_at_n,
    avg_at_n,
    default_ks,
    maj_at_k,
    mean_pass_at_k,
    pass_at_k,
    pass_at_k_array,
    pass_at_k_curve,
)
from .runner import evaluate

__all__ = [
    "pass_at_k", "pass_at_k_array", "mean_pass_at_k", "avg_at_n", "any_correct_at_n", "maj_at_k",
    "pass_at_k_curve", "default_ks", "BENCHMARKS", "SIX_BENCHMARKS", "BenchmarkError", "BenchmarkProblem",
    "load_benchmark", "load_benchmarks", "problem_from_record", "download_benchmark", "evaluate",
]
