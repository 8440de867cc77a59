"""Stopping a run whose loss has run away, so the last good checkpoint is the newest one on disk.

Two conditions, each off when its threshold is <= 0:

* `max_consecutive_skips` = K: K optimizer steps in a row were skipped (the train step drops an update whose loss or
  gradients are non-finite). One or two such steps are noise (a bad batch); K in a row means the weights or the
  optimizer state are poisoned and every further step is wasted compute.
* `spike_factor` = F: a finite loss whose magnitude exceeds F times the median magnitude of the last `window`
  finite losses, once `min_history` finite losses were seen.

Why magnitudes. SFT / OXA cross-entropy losses are positive and a divergence shows as a jump; GRPO-style policy
losses are centred near zero and change sign, so "F x the median" of signed values is meaningless (a negative or zero
median flags everything or nothing). Comparing |loss| with the median of |recent losses| is the same test for a
positive loss and, for a signed one, flags a jump in scale in either direction. When the recent median magnitude is
exactly 0 (e.g. every GRPO group had equal rewards) there is no scale to compare with and the step passes. For losses
that hover near zero a relative test stays noisy: give the guard a metric with a stable scale (e.g. the KL to the
reference) or disable the spike check.

The state (`state_dict`) is plain JSON and goes into the checkpoint next to the data position, so a resumed run
raises at exactly the step the uninterrupted one would.
"""

from __future__ import annotations

import math
import statistics
from collections import deque


class RunawayLossError(RuntimeError):
    """The loss ran away; `step` and `reason` say where and why, the message is one line."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"runaway loss at step {step}: {reason}")
        self.step = step
        self.reason = reason


class LossGuard:
    """Watches one loss value per optimizer step; `check` raises RunawayLossError when the run should stop.

    `max_consecutive_skips`: K, the number of skipped steps in a row that stops the run (<= 0: never).
    `spike_factor`: F, stop when |loss| > F x median(|last `window` finite losses|) (<= 0: never).
    `window`: how many recent finite losses the median is taken over (>= 1).
    `min_history`: finite losses that must have been seen before the spike check applies (warm-up: early losses
    fall fast and the first median is a poor scale).
    Losses are in whatever unit the loop passes (nats per token for cross-entropy).
    """

    def __init__(self, max_consecutive_skips: int, spike_factor: float, window: int, min_history: int):
        if window < 1:
            raise ValueError(f"LossGuard window must be >= 1, got {window}")
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.spike_factor = float(spike_factor)
        self.window = int(window)
        self.min_history = max(1, int(min_history))
        self.consecutive_skips = 0
        self.seen = 0  # finite, accepted losses so far (can exceed window)
        self.history: deque[float] = deque(maxlen=self.window)

    def check(self, step: int, loss: float, skipped: bool) -> None:
        """Records step `step`'s `loss`; raises RunawayLossError if the run should stop.

        `skipped`: the train step dropped this update. A non-finite `loss` counts as skipped too (its update, if
        applied, would have poisoned the weights anyway). Skipped losses never enter the history. A spiking loss is
        not recorded either: the run stops on it.
        """
        loss = float(loss)
        if skipped or not math.isfinite(loss):
            self.consecutive_skips += 1
            k = self.max_consecutive_skips
            if 0 < k <= self.consecutive_skips:
                raise RunawayLossError(step, f"{self.consecutive_skips} consecutive steps skipped for a non-finite "
                                             f"loss or gradients (max_consecutive_skips={k})")
            return
        self.consecutive_skips = 0
        if self.spike_factor > 0 and self.seen >= self.min_history and self.history:
            scale = statistics.median(abs(x) for x in self.history)
            if scale > 0 and abs(loss) > self.spike_factor * scale:
                raise RunawayLossError(step, f"loss {loss:.6g} is {abs(loss) / scale:.1f}x the median |loss| "
                                             f"{scale:.6g} of the last {len(self.history)} steps "
                                             f"(spike_factor={self.spike_factor:g})")
        self.history.append(loss)
        self.seen += 1

    def state_dict(self) -> dict:
        """JSON-able state: {'consecutive_skips': int, 'seen': int, 'history': [float, ...] oldest first}."""
        return {"consecutive_skips": self.consecutive_skips, "seen": self.seen, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        """Restores `state_dict()` output (a different `window` keeps the newest losses that fit)."""
        self.consecutive_skips = int(state["consecutive_skips"])
        self.seen = int(state["seen"])
        self.history = deque((float(x) for x in state["history"]), maxlen=self.window)
