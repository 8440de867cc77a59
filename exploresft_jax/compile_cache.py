"""JAX's persistent compilation cache, turned on only where a program read back from it runs correctly.

Why not on a multi-device CPU host. With jaxlib 0.10.2, an XLA:CPU program that holds collectives and is *loaded
from the persistent cache* (deserialized, not compiled in this process) can run two of its independent collectives
concurrently on one device and in a different order on another. Seen on 8 host devices: the sharded train step's
all-gather inside the scanned layers (channel 1) and its top-level all-reduce of the batch denominators
(channel 53) were both in flight on device 0, devices 0-6 waited at the all-reduce and device 7 never arrived;
the process aborted after XLA's collective timeout. The same step compiled in-process never did this. The cache
exists to skip recompiles of programs that every demo arm shares, so on such a host the cost of leaving it off is
compile time only. One CPU device (no collectives) and accelerators (whose programs are enqueued on per-device
streams in launch order) keep it.
"""

from __future__ import annotations

from pathlib import Path

import jax


def unsafe_reason() -> str | None:
    """Why the persistent cache must stay off on this host (one line), or None when it is safe to use."""
    if jax.default_backend() == "cpu" and jax.local_device_count() > 1:
        return (f"{jax.local_device_count()} CPU devices: XLA:CPU programs with collectives read back from the "
                "persistent compilation cache can deadlock")
    return None


def enable(directory: str | Path, *, min_compile_seconds: float = 0.5) -> bool:
    """Caches every program that took at least `min_compile_seconds` to compile under `directory`, where safe
    (`unsafe_reason`); returns whether the cache is on."""
    if unsafe_reason() is not None:
        return False
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return True


def guard() -> str | None:
    """Turns off a persistent cache that the user configured (JAX_COMPILATION_CACHE_DIR or jax.config) on a host
    where it is unsafe; returns the one line saying so, or None when nothing was changed. Call it before the
    first compile (JAX decides once per process whether the cache is used)."""
    reason = unsafe_reason()
    if reason is None or not jax.config.jax_compilation_cache_dir or not jax.config.jax_enable_compilation_cache:
        return None
    jax.config.update("jax_enable_compilation_cache", False)
    return f"persistent compilation cache off ({reason})"
