"""Stopping at a step boundary when the machine is about to be taken away (spot / preemptible VMs, SLURM, k8s).

    with PreemptionGuard() as guard:
        for step in range(start, total):
            state = train_step(state, batch)
            if guard.should_stop(step + 1):      # number of completed steps, the same on every host
                save(step + 1); print(f"stopping: {guard.reason}"); break

The signal handler only records the signal; the loop decides at the next step boundary, saves a checkpoint and exits
with status 0, so the scheduler's grace period (typically 30 s to a few minutes before SIGKILL) is spent on the save
and not on an interrupted step.

Multi-host. JAX's preemption service (enabled by `jax.distributed.initialize`) catches SIGTERM on any host and
`multihost_utils.reached_preemption_sync_point(step)` then turns True on every host at the same step, which is what
keeps hosts from stopping at different steps. Its SIGTERM handler is installed in C++ and a Python handler would
replace it, so on multi-host with that service running the guard leaves SIGTERM alone and relies on the sync point.
Without the service it installs its own handler, but then only the signalled host stops (the others block at their
next collective until the scheduler kills them): run multi-host jobs with the preemption service on.
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

import jax

_Handler = Callable[[int, FrameType | None], Any] | int | None


def _preemption_service_running() -> bool:
    """True when jax.distributed started the preemption sync manager (it owns SIGTERM then)."""
    try:
        from jax._src import distributed  # private: the public API has no query for it

        return distributed.global_state.preemption_sync_manager is not None
    except Exception:  # other jax layouts: assume absent, i.e. install the Python handler
        return False


class PreemptionGuard:
    """Context manager: turns SIGTERM (and, with `sigint=True`, the first Ctrl-C) into a stop request.

    On enter it installs handlers that only set a flag (main thread only: elsewhere `signal.signal` raises, so it
    warns once and installs nothing); on exit it puts the previous handlers back. A second Ctrl-C while a stop is
    pending runs the previous SIGINT handler (KeyboardInterrupt by default), so an interactive user can still abort a
    stuck run; a repeated SIGTERM is only recorded again, since schedulers may send it more than once.

    `sync_multihost`: on multi-host (jax.process_count() > 1), also ask JAX's preemption sync point every step.
    """

    _warned_not_main = False

    def __init__(self, *, sigint: bool = False, sync_multihost: bool = True):
        self.sigint = sigint
        self.sync_multihost = sync_multihost
        self._signum: int | None = None  # the first signal received
        self._sync_step: int | None = None  # the step at which the preemption sync point was reached
        self._previous: dict[int, _Handler] = {}
        self._sync_failed = False
        self.installed = False

    # --- the context ------------------------------------------------------------------------------------------
    def __enter__(self) -> PreemptionGuard:
        signums = []
        multihost_service = jax.process_count() > 1 and _preemption_service_running()
        if not (multihost_service and self.sync_multihost):
            signums.append(signal.SIGTERM)
        if self.sigint:
            signums.append(signal.SIGINT)
        if not signums:
            return self
        if threading.current_thread() is not threading.main_thread():
            self._warn_not_main()
            return self
        try:
            for s in signums:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # e.g. a sub-interpreter: not the main thread of the main interpreter
            self._restore()
            self._warn_not_main()
            return self
        self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, previous in self._previous.items():
            # None: the previous handler was not installed from Python and cannot be reinstated; the default is the
            # closest thing (the process then terminates on that signal, as without the guard).
            signal.signal(s, signal.SIG_DFL if previous is None else previous)
        self._previous = {}
        self.installed = False

    @classmethod
    def _warn_not_main(cls) -> None:
        if not cls._warned_not_main:
            cls._warned_not_main = True
            warnings.warn("PreemptionGuard: not in the main thread, so no signal handler was installed; "
                          "SIGTERM will terminate the run without a final checkpoint", RuntimeWarning, stacklevel=3)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: keep it to setting the flag (no I/O, no locks, no JAX).
        if self._signum is None:
            self._signum = signum
            return
        if signum == signal.SIGINT and self._signum == signal.SIGINT:
            previous = self._previous.get(signal.SIGINT)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt

    # --- the loop's side --------------------------------------------------------------------------------------
    @property
    def received(self) -> bool:
        """True once this process got a handled signal."""
        return self._signum is not None

    @property
    def signal_name(self) -> str | None:
        """'SIGTERM' / 'SIGINT' for a signal received here, 'preemption notice' for the multi-host sync point, else
        None."""
        if self._signum is not None:
            return signal.Signals(self._signum).name
        if self._sync_step is not None:
            return "preemption notice"
        return None

    @property
    def reason(self) -> str | None:
        """One phrase for the log line ('SIGTERM received', ...), None while no stop was requested."""
        if self._signum is not None:
            return f"{self.signal_name} received"
        if self._sync_step is not None:
            return f"preemption sync point reached at step {self._sync_step} (a host got a preemption notice)"
        return None

    def should_stop(self, step: int) -> bool:
        """True once a stop was requested. `step`: the step counter the loop would checkpoint now (e.g. completed
        optimizer steps); on multi-host it must be called at every step with the same value on every host, as JAX's
        sync point requires. Single-process runs never touch the preemption service."""
        if self._signum is not None or self._sync_step is not None:
            return True
        if self.sync_multihost and not self._sync_failed and jax.process_count() > 1:
            try:
                from jax.experimental import multihost_utils

                if multihost_utils.reached_preemption_sync_point(step):
                    self._sync_step = step
                    return True
            except Exception as e:  # service not initialised / unsupported backend or version: stop asking
                self._sync_failed = True
                print(f"preemption sync point unavailable ({type(e).__name__}: {e}); only local signals stop the run",
                      file=sys.stderr, flush=True)
        return self._signum is not None  # a signal may have arrived during the check
