"""PreemptionGuard (signals -> a stop request at the next step boundary) and LossGuard (runaway-loss stops)."""

import json
import math
import os
import signal
import threading
import time

import jax
import pytest
from jax.experimental import multihost_utils

from exploresft_jax.train import preemption
from exploresft_jax.train.guards import LossGuard, RunawayLossError
from exploresft_jax.train.preemption import PreemptionGuard


def _wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)
    return cond()


@pytest.fixture
def sentinel_handlers():
    """Known handlers around each test, so restoration is checked exactly and the runner's are put back."""
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    mine = {s: (lambda signum, frame: None) for s in old}
    for s, h in mine.items():
        signal.signal(s, h)
    yield mine
    for s, h in old.items():
        signal.signal(s, h)


# --- PreemptionGuard ---------------------------------------------------------------------------------------------

def test_sigterm_sets_the_flag_and_the_process_lives_on(sentinel_handlers):
    with PreemptionGuard() as guard:
        assert guard.installed and signal.getsignal(signal.SIGTERM) is not sentinel_handlers[signal.SIGTERM]
        assert not guard.should_stop(0) and guard.signal_name is None and guard.reason is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(lambda: guard.received)
        assert guard.should_stop(1) and guard.should_stop(2)  # stays set
        assert guard.signal_name == "SIGTERM" and guard.reason == "SIGTERM received"
        os.kill(os.getpid(), signal.SIGTERM)  # repeated notices are only recorded
        time.sleep(0.05)
    assert not guard.installed
    assert signal.getsignal(signal.SIGTERM) is sentinel_handlers[signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is sentinel_handlers[signal.SIGINT]


def test_handler_restored_after_an_exception_and_default_restored(sentinel_handlers):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with pytest.raises(KeyError):
        with PreemptionGuard():
            raise KeyError("boom")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_sigint_is_left_alone_by_default(sentinel_handlers):
    with PreemptionGuard() as guard:
        assert signal.getsignal(signal.SIGINT) is sentinel_handlers[signal.SIGINT]
        assert guard.installed


def test_sigint_opt_in_first_stops_second_interrupts():
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with PreemptionGuard(sigint=True) as guard:
            os.kill(os.getpid(), signal.SIGINT)
            assert _wait_for(lambda: guard.received)
            assert guard.should_stop(3) and guard.reason == "SIGINT received"
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                _wait_for(lambda: False, timeout=1.0)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_installs_nothing_and_warns_once(sentinel_handlers, monkeypatch):
    monkeypatch.setattr(PreemptionGuard, "_warned_not_main", False)
    seen = {}

    def body():
        with pytest.warns(RuntimeWarning, match="not in the main thread"):
            with PreemptionGuard() as g:
                seen["installed"] = g.installed
                seen["stop"] = g.should_stop(0)
        with PreemptionGuard() as g:  # second time: silent
            seen["installed2"] = g.installed

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"installed": False, "stop": False, "installed2": False}
    assert signal.getsignal(signal.SIGTERM) is sentinel_handlers[signal.SIGTERM]


def test_single_process_never_asks_the_preemption_service(monkeypatch, sentinel_handlers):
    def boom(step):
        raise AssertionError("must not be called on one process")

    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", boom)
    assert jax.process_count() == 1
    with PreemptionGuard() as guard:
        assert not any(guard.should_stop(s) for s in range(5))


def test_multihost_sync_point(monkeypatch, sentinel_handlers, capsys):
    asked = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda s: asked.append(s) or s == 7)
    with PreemptionGuard() as guard:
        # no service in this process: the guard keeps its own SIGTERM handler
        assert guard.installed
        assert [guard.should_stop(s) for s in range(5, 9)] == [False, False, True, True]
        assert asked == [5, 6, 7]  # once reached, it is not asked again
        assert guard.signal_name == "preemption notice" and "step 7" in guard.reason

    # the service missing / failing: one line, then only local signals count
    def fail(step):
        asked.append(step)
        raise RuntimeError("Preemption sync manager has not been initialized.")

    asked.clear()
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", fail)
    with PreemptionGuard() as guard:
        assert [guard.should_stop(s) for s in range(3)] == [False, False, False]
        assert asked == [0]
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(lambda: guard.should_stop(3))
    err = capsys.readouterr().err
    assert err.count("preemption sync point unavailable") == 1


def test_multihost_with_the_service_leaves_its_sigterm_handler(monkeypatch, sentinel_handlers):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption, "_preemption_service_running", lambda: True)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda s: s == 2)
    with PreemptionGuard() as guard:
        assert not guard.installed
        assert signal.getsignal(signal.SIGTERM) is sentinel_handlers[signal.SIGTERM]
        assert [guard.should_stop(s) for s in range(4)] == [False, False, True, True]
    assert signal.getsignal(signal.SIGTERM) is sentinel_handlers[signal.SIGTERM]


# --- LossGuard ---------------------------------------------------------------------------------------------------

def _run(guard, seq, start=0):
    """Feeds (loss, skipped) pairs from step `start`; the step that raised, or None."""
    for i, (loss, skipped) in enumerate(seq, start):
        try:
            guard.check(i, loss, skipped)
        except RunawayLossError as e:
            return e
    return None


def test_consecutive_skips():
    g = LossGuard(max_consecutive_skips=3, spike_factor=0, window=10, min_history=1)
    seq = [(1.0, False), (9.0, True), (9.0, True), (1.0, False),  # two skips, then reset by a good step
           (9.0, True), (math.nan, False), (9.0, True)]  # a non-finite loss counts as skipped
    e = _run(g, seq, start=10)
    assert e is not None and e.step == 16
    assert str(e) == ("runaway loss at step 16: 3 consecutive steps skipped for a non-finite loss or gradients "
                      "(max_consecutive_skips=3)")
    assert "\n" not in str(e) and isinstance(e, RuntimeError)
    assert list(g.history) == [1.0, 1.0]  # skipped losses never enter the history


def test_skip_check_disabled():
    g = LossGuard(max_consecutive_skips=0, spike_factor=0, window=4, min_history=1)
    assert _run(g, [(math.inf, True)] * 100) is None
    assert g.consecutive_skips == 100


def test_spike_against_the_running_median():
    g = LossGuard(max_consecutive_skips=0, spike_factor=3.0, window=4, min_history=3)
    # steps 0, 1: warm-up (fewer than min_history=3 losses seen), so 50 at step 1 passes
    # history after step 4: [50, 2.0, 2.2, 1.8] -> median |.| = (2.0 + 2.2) / 2 = 2.1 -> threshold 6.3
    seq = [(2.0, False), (50.0, False), (2.0, False), (2.2, False), (1.8, False),
           (6.3, False),  # == threshold: passes (strictly greater is a spike); history [2.0, 2.2, 1.8, 6.3]
           (6.5, False),  # median (2.0 + 2.2) / 2 = 2.1 -> 6.5 > 6.3: spike
           ]
    e = _run(g, seq)
    assert e is not None and e.step == 6
    assert str(e) == ("runaway loss at step 6: loss 6.5 is 3.1x the median |loss| 2.1 of the last 4 steps "
                      "(spike_factor=3)")
    assert list(g.history) == [2.0, 2.2, 1.8, 6.3] and g.seen == 6  # the spike itself is not recorded


def test_spike_window_rolls():
    g = LossGuard(max_consecutive_skips=0, spike_factor=2.0, window=2, min_history=2)
    # losses rise slowly; a window of 2 follows them, so no single step doubles the recent median
    assert _run(g, [(x, False) for x in (1.0, 1.5, 2.2, 3.3, 5.0, 7.5)]) is None
    assert list(g.history) == [5.0, 7.5]
    e = _run(g, [(12.6, False)], start=6)  # median (5 + 7.5) / 2 = 6.25 -> threshold 12.5
    assert e is not None and e.step == 6


def test_spike_check_disabled():
    g = LossGuard(max_consecutive_skips=0, spike_factor=0.0, window=3, min_history=1)
    assert _run(g, [(1.0, False), (1e6, False), (-1e9, False)]) is None


def test_negative_and_near_zero_losses_compare_magnitudes():
    g = LossGuard(max_consecutive_skips=0, spike_factor=4.0, window=4, min_history=4)
    seq = [(-0.5, False), (0.4, False), (-0.6, False), (0.5, False)]  # |.| sorted .4 .5 .5 .6 -> median .5
    assert _run(g, seq) is None
    assert _run(g, [(-1.9, False)], start=4) is None  # 1.9 <= 2.0; history [.4 -.6 .5 -1.9] -> median .55
    e = _run(g, [(-2.3, False)], start=5)  # threshold 4 x 0.55 = 2.2: a negative runaway counts as well
    assert e is not None and e.step == 5 and "loss -2.3 is 4.2x the median |loss| 0.55" in str(e)

    z = LossGuard(max_consecutive_skips=0, spike_factor=10.0, window=3, min_history=1)
    # all-zero history (e.g. no group had a reward spread): no scale, nothing to compare with
    assert _run(z, [(0.0, False)] * 3 + [(1e-3, False)]) is None
    # the first non-zero losses set a scale again
    assert _run(z, [(1e-3, False)], start=4) is None  # history [0, 1e-3, 1e-3] -> median 1e-3
    e = _run(z, [(-0.0125, False)], start=5)
    assert e is not None and e.step == 5


def test_state_dict_resume_matches_the_uninterrupted_run():
    rng = [((-1) ** i * (1.0 + 0.1 * (i % 5)), False) for i in range(30)]
    seq = rng[:12] + [(math.nan, True), (math.nan, True)] + rng[12:20] + [(math.nan, True)] * 3 + [(25.0, False)]

    def make():
        return LossGuard(max_consecutive_skips=4, spike_factor=8.0, window=6, min_history=5)

    whole = make()
    e_whole = _run(whole, seq)
    assert e_whole is not None and e_whole.step == len(seq) - 1 and "x the median" in str(e_whole)

    for cut in (3, 13, 21, 24):  # inside the warm-up, inside a run of skips, ...
        first = make()
        assert _run(first, seq[:cut]) is None
        saved = json.loads(json.dumps(first.state_dict()))  # what the checkpoint's data item holds
        resumed = make()
        resumed.load_state_dict(saved)
        e = _run(resumed, seq[cut:], start=cut)
        assert e is not None and str(e) == str(e_whole)
        assert resumed.state_dict() == whole.state_dict()


def test_load_state_dict_with_a_smaller_window_keeps_the_newest():
    g = LossGuard(max_consecutive_skips=2, spike_factor=2.0, window=5, min_history=1)
    _run(g, [(float(x), False) for x in range(1, 6)] + [(0.0, True)])
    small = LossGuard(max_consecutive_skips=2, spike_factor=2.0, window=2, min_history=1)
    small.load_state_dict(g.state_dict())
    assert list(small.history) == [4.0, 5.0] and small.seen == 5 and small.consecutive_skips == 1
    e = _run(small, [(math.inf, False)], start=6)
    assert e is not None and e.step == 6 and "2 consecutive" in str(e)


def test_arguments_checked():
    with pytest.raises(ValueError, match="window"):
        LossGuard(max_consecutive_skips=1, spike_factor=2.0, window=0, min_history=1)
