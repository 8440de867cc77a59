"""A run whose loss runs away stops with one line naming the step, and nothing after the last good step is saved."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from exploresft_jax import cli
from exploresft_jax.train import loop
from exploresft_jax.train.guards import RunawayLossError
from tests.reliability.common import tiny


def _poison_from(monkeypatch, first_bad: int, value: float):
    """Wraps the train step so that steps >= first_bad report `value` as their loss (NaN: also reported as
    skipped, as the real step reports a non-finite loss). Only the reported metrics change: what the guard sees."""
    make = loop.make_train_step

    def make_poisoned(*args, **kw):
        step_fn = make(*args, **kw)

        def poisoned(state, batch):
            new, metrics = step_fn(state, batch)  # `state` is donated: only `new` may be read from here on
            if int(new.step) >= first_bad:
                metrics = dict(metrics, loss=jnp.float32(value), skipped=jnp.int32(bool(jnp.isnan(value))))
            return new, metrics

        return poisoned

    monkeypatch.setattr(loop, "make_train_step", make_poisoned)


def _saved(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_consecutive_non_finite_steps_stop_the_run(tmp_path, monkeypatch):
    _poison_from(monkeypatch, first_bad=3, value=float("nan"))
    cfg = tiny(tmp_path, "sft", **{"checkpoint.every_steps": 2, "guard.max_consecutive_skips": 3})
    with pytest.raises(RunawayLossError, match="at step 5: 3 consecutive"):
        loop.run(cfg)
    assert _saved(tmp_path) == [2, 4]  # step 5, the third non-finite one, is never saved
    assert not (tmp_path / "hf_export").exists()


def test_a_loss_spike_stops_the_run_before_its_checkpoint(tmp_path, monkeypatch, capsys):
    _poison_from(monkeypatch, first_bad=6, value=1e4)

    def main(argv):
        loop.run(tiny(tmp_path, "sft", **{"guard.loss_spike_factor": 10.0, "guard.spike_min_history": 3,
                                          "checkpoint.every_steps": 2}))

    assert cli.run(main, []) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: runaway loss at step 6:") and "median" in err[-1]
    assert _saved(tmp_path) == [2, 4]
