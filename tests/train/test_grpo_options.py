"""The GRPO loop with every non-default option at once (GSPO, token-level IS truncation, high-entropy tokens,
Pass@k advantages, DAPO's overlong penalty, a paged KV cache of 8 pages per device, less than two rows of up to
56 entries): it runs, logs each option's metrics, and they are sane."""

from __future__ import annotations

import math

from exploresft_jax.train import grpo_loop
from exploresft_jax.train.logger import read_metrics
from tests.reliability.common import seed_warmup, tiny


def test_grpo_loop_runs_every_option_and_logs_its_metrics(tmp_path, grpo_warmup):
    seed_warmup(tmp_path, grpo_warmup)
    cfg = tiny(tmp_path, "grpo", **{
        "optim.num_steps": 2, "checkpoint.export_hf": False, "grpo.policy_loss": "gspo",
        "grpo.aggregation": "seq-mean-token-mean", "grpo.rollout_correction": "token_truncate",
        "grpo.entropy_token_fraction": 0.5, "grpo.advantage_estimator": "passk", "grpo.passk_k": 2,
        "grpo.overlong_penalty": True, "grpo.overlong_buffer": 8, "grpo.kv_pages": 8, "grpo.page_size": 8})
    grpo_loop.run(cfg)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert -1.0 <= r["overlong_penalty_mean"] <= 0.0
        assert r["mismatch_kl"] < 1e-4  # float32 sampler and trainer: the same policy
        assert 0.0 <= r["rollout_is_capped_frac"] <= 1.0 and 0.0 < r["entropy_selected_frac"] <= 0.6
        assert r["rollout_seconds"] > 0 and r["update_seconds"] > 0 and 0 < r["decode_slots_busy"] <= 1
        assert all(math.isfinite(v) for k, v in r.items() if isinstance(v, float))


def test_train_state_parked_in_host_memory_during_rollouts_changes_nothing(tmp_path, grpo_warmup, monkeypatch):
    """grpo.offload_state (the default): while rollouts are sampled the train state lives in pinned host memory,
    the KL reference too outside its phase; the run's weights and metrics equal a run that keeps both on the
    device, bit for bit."""
    from exploresft_jax.train import offload
    from tests.reliability.common import assert_same_weights

    parked = []
    original = grpo_loop.GRPORun._park

    def park(self, state):
        out = original(self, state)
        parked.append((offload.on_host(out.params), offload.on_host(out.opt_state),
                       offload.on_host(self.ref_params)))
        return out

    monkeypatch.setattr(grpo_loop.GRPORun, "_park", park)
    runs = {}
    for on in (True, False):
        work = tmp_path / str(on)
        seed_warmup(work, grpo_warmup)
        grpo_loop.run(tiny(work, "grpo", **{"optim.num_steps": 1, "grpo.kl_coef": 0.01,
                                            "grpo.offload_state": on}))
        runs[on] = read_metrics(work / "metrics.jsonl")
    assert parked == [(True, True, True), (False, False, False)]
    assert_same_weights(tmp_path / "True", tmp_path / "False")
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k  # noqa: E731
                           and k != "time"} for r in rows]
    assert strip(runs[True]) == strip(runs[False])
