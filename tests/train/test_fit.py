"""Fit is proven: the shipped TPU configs compile for a v5e-8 slice (oxa_colab for one v5e chip) with at least
10% of HBM free per chip, and GRPO's sampler with a paged KV cache sizes its page pools to the HBM left.

The TPU compiler runs here on CPU (libtpu from the `test` extra; compile-only topology devices), so a change
that makes a step or the sampler need more memory fails this file. The compiles take minutes on 2 cores;
everything else is quick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import pytest
from jax.sharding import NamedSharding

from exploresft_jax import sharding as shd
from exploresft_jax.models.qwen2 import Qwen2Config, init_model
from exploresft_jax.train import fit
from exploresft_jax.train.optim import make_optimizer
from exploresft_jax.train.step import StepConfig, init_train_state

ROOT = Path(__file__).resolve().parents[2]
MIN_HEADROOM_PCT = 10.0


def _clean_env() -> dict:
    """The environment of a fresh shell: no fake host devices; the host runs on CPU beside the TPU compiler."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _fit(config: str, *extra: str, topology: str = "v5e-8") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts/fit.py"), "--config", config, "--topology",
                             topology, "--json", *extra], cwd=ROOT, env=_clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module", autouse=True)
def compiles():
    """Both compiles start with the module's first test, in their own processes (a TPU compile is mostly one
    thread), and run while the quick tests do."""
    procs = {"oxa_tpu": _fit("configs/oxa_tpu.py"), "grpo_tpu": _fit("configs/grpo_tpu.py"),
             "oxa_colab": _fit("configs/oxa_colab.py", topology="v5e-1"),
             "grpo_paged": _fit("configs/grpo_tpu.py", "--programs", "prefill,insert,decode", "--max-pages",
                                "--config.grpo.sampler_rows=512", "--config.grpo.kv_pages=1120")}
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()


def _results(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=1800)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert not errors, errors[0]  # e.g. 'error: compiling for v5e-8 needs libtpu: pip install libtpu==...'
    results = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert results, err[-2000:]
    return results


def _assert_headroom(results):
    for r in results:
        assert r["fits"], f"{r['config']} {r['program']} does not fit {r['topology']}: {r['error']}"
        assert r["headroom_pct"] >= MIN_HEADROOM_PCT, (
            f"{r['config']} {r['program']} on {r['topology']}: {r['per_chip_gib']:.2f} of {r['hbm_gib']:.2f} GiB "
            f"per chip, {r['headroom_pct']:.1f}% free < {MIN_HEADROOM_PCT}%")


def test_optimizer_state_is_placed_like_the_parameters():
    """Adam's moments follow the FSDP sharding (the compiler alone would replicate the zero init)."""
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)
    optim = ml_collections.ConfigDict(dict(lr=1e-3, schedule="constant", warmup_ratio=0.0, warmup_steps=0,
                                           min_lr_ratio=0.0, cosine_horizon_factor=1.0, b1=0.9, b2=0.95, eps=1e-8,
                                           weight_decay=0.1, clip_norm=1.0))
    tx, _ = make_optimizer(optim, 10)
    mesh = shd.make_mesh((1, 8, 1))
    _, state = init_train_state(init_model(cfg, mesh=mesh, rules=shd.TRAIN_RULES), tx, StepConfig(method="curio"))
    adam = state.opt_state[1][0]
    for moments in (adam.mu, adam.nu, state.teacher):
        for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(moments)):
            assert isinstance(m.sharding, NamedSharding) and m.sharding.spec == p.sharding.spec
    assert state.params["embed"].sharding.spec[1] == "fsdp"


def test_unknown_topology_is_one_line_and_non_zero():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/fit.py"), "--config", "configs/oxa_tpu.py",
                           "--topology", "v9z-8"], cwd=ROOT, env=_clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "unknown topology 'v9z-8'" in lines[0] and "v5e-8" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("topology, hbm_gib", [("v5e-1", 15.75), ("v6e-1", 31.25)])
def test_one_chip_topologies(topology, hbm_gib):
    """Single chips (libtpu's default of 4 chips a host does not divide them): one device, its HBM as the
    compiler reports it. In this process: compile-only TPU devices sit beside the 8 fake CPU devices."""
    target = fit.resolve_target(topology)
    assert len(target.devices) == 1 and target.platform == "tpu"
    assert target.hbm_source == "compiler" and abs(target.hbm_bytes / fit.GIB - hbm_gib) < 0.01


def test_model_folder_missing_falls_back_to_the_named_preset():
    cfg = fit.load_config(str(ROOT / "configs/grpo_tpu.py"))
    mcfg, source = fit.model_config(cfg)
    assert source.startswith("preset qwen2p5_math_1p5b") and mcfg.num_layers == 28
    assert fit.model_config(cfg, preset="qwen2p5_math_7b")[0].hidden_size == 3584
    cfg.unlock()
    cfg.model.path = "somewhere/else"
    with pytest.raises(fit.FitError, match="--preset"):
        fit.model_config(cfg)


def test_oxa_tpu_fits_v5e8_at_32768(compiles):
    results = _results(compiles["oxa_tpu"])
    assert [r["program"] for r in results] == ["train_step"]
    r = results[0]
    assert r["shapes"]["tokens"][-1] == 32768 and r["chips"] == 8 and r["hbm_source"] == "compiler"
    assert abs(r["hbm_gib"] - 15.75) < 0.01 and r["flops"] > 0
    _assert_headroom(results)


def test_oxa_colab_fits_one_v5e_chip_at_32768_with_lora(compiles):
    results = _results(compiles["oxa_colab"])
    assert [r["program"] for r in results] == ["train_step"]
    r = results[0]
    assert r["chips"] == 1 and r["shapes"]["tokens"][1:] == [1, 32768] and abs(r["hbm_gib"] - 15.75) < 0.01
    _assert_headroom(results)


def test_grpo_tpu_fits_v5e8(compiles):
    """Every program fits with 10% free. The sampler's insert copies prompt caches into the donated slot caches
    in place, one layer at a time (`continuous._take_rows`): its temporaries stay below two layers' gathered
    prompt rows (K and V, 32 slots and 1 KV head per chip, 2048 entries x 128, bfloat16); gathering all 28
    layers at once took 1.9 GiB."""
    results = _results(compiles["grpo_tpu"])
    assert {"train_step", "prefill", "insert", "decode"} <= {r["program"] for r in results}
    _assert_headroom(results)
    (insert,) = [r for r in results if r["program"] == "insert"]
    assert insert["shapes"]["slots"] == [128] and insert["shapes"]["prompt_pool"][1] == 2048, insert["shapes"]
    layer_rows_gib = 2 * 32 * 1 * 2048 * 128 * 2 / 2 ** 30
    assert insert["alias_gib"] >= insert["output_gib"] * 0.99 and insert["temp_gib"] < 2 * layer_rows_gib, insert


def test_grpo_tpu_paged_sampler_takes_every_rollout_at_once(compiles):
    """All 512 rollouts of a step in decode slots at once, the KV cache in page pools: at one longest row's pages
    per device every sampler program fits, with decode attention in the Pallas TPU paged-attention kernel;
    --max-pages then finds pools that hold more longest rows per device than the dense cache's 32 (128 slots
    over 4 batch devices), still with 10% free, each page costing its physical bytes per chip (K and V, 28
    layers, 1 of the 2 KV heads, 16 entries x 128, bfloat16)."""
    results = _results(compiles["grpo_paged"])
    programs = [r for r in results if "program" in r]
    assert {r["program"] for r in programs} == {"prefill", "insert", "decode"}
    assert all(r["shapes"]["kv_pages"] == [1120, 16] and r["shapes"]["slots"] == [512] for r in programs)
    (decode,) = [r for r in programs if r["program"] == "decode"]
    assert decode["kernels"] == ["paged_attention"], decode["kernels"]  # the Pallas TPU kernel reads the pages
    _assert_headroom(programs)
    (search,) = [r for r in results if "max_kv_pages" in r]
    assert search["row_pages"] == 1120 and search["longest_rows_per_device"] > 32, search
    assert search["largest_program"]["headroom_pct"] >= MIN_HEADROOM_PCT
    assert search["largest_program"]["shapes"]["kv_pages"] == [search["max_kv_pages"], 16]
    page_bytes = 2 * 28 * 1 * 16 * 128 * 2
    assert abs(search["page_gib"] * 2 ** 30 / page_bytes - 1) < 0.05, search
