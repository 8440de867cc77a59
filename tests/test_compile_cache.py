"""The persistent compilation cache stays off on a multi-device CPU host, and turns on where it is safe."""

from __future__ import annotations

import os
import subprocess
import sys

import jax

from exploresft_jax import compile_cache


def test_off_on_the_suites_eight_cpu_devices_with_a_reason(tmp_path):
    assert jax.local_device_count() == 8
    assert "8 CPU devices" in compile_cache.unsafe_reason()
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable(tmp_path) is False and jax.config.jax_compilation_cache_dir == before
    # a cache the user configured is switched off with one line
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    try:
        note = compile_cache.guard()
        assert note.startswith("persistent compilation cache off (8 CPU devices") and "\n" not in note
        assert jax.config.jax_enable_compilation_cache is False
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        jax.config.update("jax_enable_compilation_cache", True)
    assert compile_cache.guard() is None  # nothing configured: nothing to change


def test_on_with_one_cpu_device(tmp_path):
    code = ("import jax, jax.numpy as jnp; from exploresft_jax import compile_cache as c; "
            f"print(c.unsafe_reason(), c.enable({str(tmp_path)!r}), jax.config.jax_compilation_cache_dir == "
            f"{str(tmp_path)!r})")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "True", "True"]
