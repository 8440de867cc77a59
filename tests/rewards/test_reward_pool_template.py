"""Workers forked from the warm template interpreter: killed workers are replaced, and the fallback works."""

import os
import signal
import time

from exploresft_jax.rewards import VerifierConfig, VerifierPool

CFG = VerifierConfig(timeout=2.0)


def _batch_ok(pool, n=6):
    golds = [str(i) for i in range(n)]
    return [v.status for v in pool.check_batch(golds, [rf"\boxed{{{g}}}" for g in golds])] == ["correct"] * n


def test_template_workers_replace_killed_ones():
    with VerifierPool(2, CFG) as pool:
        pool.start()
        if pool._template is None:  # platforms without fd passing use fresh interpreters (tested below)
            return
        pids = [w.pid for w in pool._idle]
        assert all(pids) and len(set(pids)) == 2
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        # The dead workers are noticed (at most one verdict each says so) and replaced by fresh forks.
        statuses = [v.status for v in pool.check_batch(["1"] * 6, [r"\boxed{1}"] * 6)]
        assert set(statuses) <= {"correct", "parse_error"} and statuses.count("correct") >= 4
        t0 = time.monotonic()
        assert _batch_ok(pool)
        assert time.monotonic() - t0 < 30
        assert not {w.pid for w in pool._idle} & set(pids)
    assert pool._template is None  # closed with the pool


def test_fresh_interpreter_fallback():
    with VerifierPool(1, CFG, use_template=False) as pool:
        assert _batch_ok(pool, 3)
        assert pool._template is None and pool._idle[0].proc is not None
