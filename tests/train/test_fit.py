"""Fit is proven: the shipped TPU configs compile for a v5e-8 slice with at least 10% of HBM free per chip.

The TPU compiler runs here on CPU (libtpu from the `test` extra; compile-only topology devices), so a change
that makes a step or the sampler need more memory fails this file. The compiles take minutes on 2 cores;
everything else is quick.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def v5e8() -> fit.Target:
    return fit.resolve_target("v5e-8")  # no skip: a missing libtpu fails with the pip line to run


def _assert_headroom(results):
    assert results
    for r in results:
        assert r.fits, f"{r.config} {r.program} does not fit {r.topology}: {r.error or r.per_chip_gib}"
        assert r.headroom_pct >= MIN_HEADROOM_PCT, (
            f"{r.config} {r.program} on {r.topology}: {r.per_chip_gib:.2f} of {r.hbm_gib:.2f} GiB per chip, "
            f"{r.headroom_pct:.1f}% free < {MIN_HEADROOM_PCT}%")


def test_topology_devices_and_compiler_hbm(v5e8):
    assert len(v5e8.devices) == 8 and v5e8.platform == "tpu"
    assert v5e8.hbm_source == "compiler" and abs(v5e8.hbm_bytes / fit.GIB - 15.75) < 0.01


def test_oxa_tpu_fits_v5e8_at_32768(v5e8):
    cfg = fit.load_config(str(ROOT / "configs/oxa_tpu.py"))
    assert cfg.data.max_length == 32768  # the release's length, not a shortened one
    results = fit.check_config(cfg, v5e8, cfg_name="oxa_tpu")
    assert [r.program for r in results] == ["train_step"]
    _assert_headroom(results)
    assert results[0].flops > 0 and results[0].shapes["tokens"][-1] == 32768


def test_grpo_tpu_fits_v5e8(v5e8):
    cfg = fit.load_config(str(ROOT / "configs/grpo_tpu.py"))
    results = fit.check_config(cfg, v5e8, cfg_name="grpo_tpu")
    assert {"train_step", "prefill", "decode"} <= {r.program for r in results}
    _assert_headroom(results)


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
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/fit.py"), "--config", "configs/oxa_tpu.py",
                           "--topology", "v9z-8"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "unknown topology 'v9z-8'" in lines[0] and "v5e-8" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_model_folder_missing_falls_back_to_the_named_preset():
    cfg = fit.load_config(str(ROOT / "configs/grpo_tpu.py"))
    mcfg, source = fit.model_config(cfg)
    assert source.startswith("preset qwen2p5_math_1p5b") and mcfg.num_layers == 28
    assert fit.model_config(cfg, preset="qwen2p5_math_7b")[0].hidden_size == 3584
    cfg.unlock()
    cfg.model.path = "somewhere/else"
    with pytest.raises(fit.FitError, match="--preset"):
        fit.model_config(cfg)
