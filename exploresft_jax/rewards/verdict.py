"""Verdict and configuration types shared by the verifier, its worker processes and callers."""

from __future__ import annotations

import dataclasses

from .extract import EXTRACTION_MODES

__all__ = ["Verdict", "VerifierConfig", "CORRECT", "WRONG", "NO_ANSWER", "TIMEOUT", "PARSE_ERROR", "STATUSES"]

CORRECT = "correct"
WRONG = "wrong"
NO_ANSWER = "no_answer"
TIMEOUT = "timeout"
PARSE_ERROR = "parse_error"
STATUSES = (CORRECT, WRONG, NO_ANSWER, TIMEOUT, PARSE_ERROR)


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
    """Settings of one verification.

    Attributes:
      timeout: seconds allowed per item (extraction, parsing and comparison). The worker interrupts itself at
        ``timeout``; the parent process kills it at ``timeout + grace`` if it has not answered.
      require_think_close: the answer must come after ``</think>``; responses without it get ``no_answer``.
      last_number_fallback: when no box or anchor phrase is found, use the last number of the response.
        Off by default: it rewards stray numbers.
      take_whole: a prediction that is itself one math expression is taken whole as the answer.
      float_rel_tol: relative tolerance when either side is a decimal (inexact) number. Exact numbers
        (integers, fractions, radicals, pi) must be equal exactly.
      string_match: accept identical normalised strings without parsing (fast path). Turning it off makes every
        item go through the sympy comparison (used to check that every gold answer parses).
      max_answer_chars: longer extracted answers are a ``parse_error`` (no real answer is that long, and
        parsing cost grows fast with length; the reason names the ``answer_length`` guard). The other guards
        (nesting depth, power towers, huge factorials, ...) have fixed limits, see ``guards.py``.
      symbolic_budget: seconds the symbolic stage of one item (sympy's simplify and evaluation, after parsing)
        may take, capped at half of ``timeout``; past it the item is a ``parse_error`` naming the
        ``symbolic_budget`` guard, so that an expensive answer costs a fraction of the timeout, not all of it.
        Numeric spot checks and exact number comparisons, which decide nearly every item, come first.
      extraction: how the answer is found in a response (see ``extract.py``): ``permissive`` (default, for
        evaluation: box, answer phrases in several languages, last math span, closing number), ``standard``
        (box, a bare expression, "final answer is" / "the answer is"; ``last_number_fallback`` adds any last
        number) or ``boxed_only`` (for RL rewards where answering in a box is part of the task).
    """

    timeout: float = 5.0
    require_think_close: bool = False
    last_number_fallback: bool = False
    take_whole: bool = True
    float_rel_tol: float = 1e-4
    string_match: bool = True
    max_answer_chars: int = 2000
    extraction: str = "permissive"
    symbolic_budget: float = 1.0

    def __post_init__(self):
        if self.extraction not in EXTRACTION_MODES:
            raise ValueError(f"extraction must be one of {EXTRACTION_MODES}, not {self.extraction!r}")

    @property
    def grace(self) -> float:
        """Extra seconds the parent waits after ``timeout`` before killing a worker."""
        return 0.5 + 0.25 * self.timeout

    def replace(self, **changes) -> VerifierConfig:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Outcome of checking one prediction against one gold answer.

    Attributes:
      status: one of ``correct``, ``wrong``, ``no_answer``, ``timeout``, ``parse_error``.
      reason: a short human-readable explanation (which rule decided, or what failed).
      answer: the answer extracted from the prediction (None if none was found).
      gold: the gold answer as compared (after unwrapping ``\\boxed{}``/``$``).
    """

    status: str
    reason: str = ""
    answer: str | None = None
    gold: str | None = None

    @property
    def correct(self) -> bool:
        return self.status == CORRECT

    @property
    def reward(self) -> float:
        return 1.0 if self.status == CORRECT else 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
