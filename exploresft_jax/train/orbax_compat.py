"""Work-arounds for orbax-checkpoint behaviour, in one place (orbax-checkpoint 0.12.8).

The stray "RuntimeError: Event loop is closed" tracebacks. orbax runs each restore in a fresh asyncio loop
(`asyncio_utils._run_sync_via_new_loop`, a private function) that awaits one tensorstore read per array through
`asyncio.gather`. When one read fails (a damaged checkpoint), gather raises at once, the loop is closed, and the
sibling reads are still running on tensorstore's threads; each one that completes afterwards calls
`loop.call_soon_threadsafe` on the closed loop, and tensorstore reports the RuntimeError through
`sys.unraisablehook`: one traceback per array, interleaved with the real error. `settled_event_loops()` swaps that
function, while a restore runs, for one that lets the pending reads finish (bounded by SETTLE_TIMEOUT_S) before
closing its loop; it is identical to orbax's on success.

How to drop it: when orbax cancels or awaits the sibling reads itself on a failed restore (run a restore of a
checkpoint with a deleted array file and look for the tracebacks), delete this module and its one use in
`checkpoint.Checkpointer`. If orbax moves the private function, the patch is skipped (the tracebacks come back;
the fallback to an older checkpoint still works).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

try:  # private module of orbax: see the module docstring
    from orbax.checkpoint._src import asyncio_utils as _orbax_asyncio
except ImportError:  # pragma: no cover - other orbax layouts
    _orbax_asyncio = None

# After a failed read, how long to let orbax's sibling reads finish before their event loop is closed (seconds).
SETTLE_TIMEOUT_S = 120.0
_patch_lock = threading.Lock()
_patch_depth = 0
_orbax_run_sync_via_new_loop = getattr(_orbax_asyncio, "_run_sync_via_new_loop", None)


def _settle(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        return
    _, not_done = loop.run_until_complete(asyncio.wait(pending, timeout=SETTLE_TIMEOUT_S))
    for t in not_done:
        t.cancel()
    if not_done:
        loop.run_until_complete(asyncio.wait(not_done, timeout=1.0))
    for t in pending:  # marks the siblings' own errors retrieved ("Task exception was never retrieved" otherwise)
        if t.done() and not t.cancelled():
            t.exception()


def _run_sync_via_settling_loop(coro):
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(coro)
        except Exception:
            _settle(loop)
            raise
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@contextlib.contextmanager
def settled_event_loops():
    global _patch_depth
    if _orbax_run_sync_via_new_loop is None:
        yield
        return
    with _patch_lock:
        if _patch_depth == 0:
            _orbax_asyncio._run_sync_via_new_loop = _run_sync_via_settling_loop
        _patch_depth += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                _orbax_asyncio._run_sync_via_new_loop = _orbax_run_sync_via_new_loop


