"""Test setup: 8 fake CPU devices (set before jax is imported), offline HF, parsed absl flags for grain."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"] if "device_count" in os.environ["XLA_FLAGS"] else (
    os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


# The project's own small benchmark files, one folder per benchmark in each source's field format.
BENCHMARK_FIXTURE = ROOT / "tests" / "data" / "benchmarks"


def benchmark_sources() -> dict[str, Path]:
    """Benchmark folders the tests read: always the project's own fixture; the full sets beside the project
    (../shared/data/benchmarks) as well where that folder exists."""
    sources = {"fixture": BENCHMARK_FIXTURE}
    if (SHARED_DATA / "benchmarks").is_dir():
        sources["full"] = SHARED_DATA / "benchmarks"
    return sources


@pytest.fixture(scope="session")
def grpo_warmup(tmp_path_factory):
    """The tiny GRPO config's SFT warm-up (tests/reliability/common.py), trained once for every GRPO run test."""
    from tests.reliability.common import make_warmup

    return make_warmup(tmp_path_factory.mktemp("warmup"))


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drops JAX's compiled programs after each test module. Every XLA:CPU executable keeps about six memory
    mappings of its JIT-compiled code while cached; the whole suite compiles enough programs in one process to
    pass Linux's default vm.max_map_count (65,530), after which LLVM's next mapping fails and a compile segfaults
    (seen at about 94% of the suite). Tests share compiled functions within a module, not across modules."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


_progress = {"seen": set(), "start": None, "config": None}


def pytest_configure(config):
    _progress["config"] = config


def pytest_runtest_logstart(nodeid, location):
    """Writes the elapsed time at the start of each test module, so a log cut short (or a run stopped by a time
    limit) still shows which modules were running and how long each one took. With pytest-xdist (`-n 2 --dist
    loadfile`: each module runs whole on one worker) the main process writes it when a worker starts the module."""
    import time

    module = nodeid.split("::", 1)[0]
    if module in _progress["seen"] or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    now = time.monotonic()
    _progress["start"] = _progress["start"] or now
    _progress["seen"].add(module)
    reporter = _progress["config"].pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write(f"\n[{now - _progress['start']:6.0f} s] {module} ")
