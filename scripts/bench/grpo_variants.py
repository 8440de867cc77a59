#!/usr/bin/env python
"""GRPO loss, correction and advantage variants on the tiny CPU task: does the rollout reward rise under each?

    python scripts/bench/grpo_variants.py [--iterations 30] [--arms ppo_clip gspo ...] [--workdir runs/grpo_variants]
                                          [--json]

Every arm starts from the same SFT warm-up (a random model fine-tuned on addition solutions half of which drop
their carries, trained once and copied) and runs `configs/tiny_cpu.py --config.method=grpo` with its option
changed. The table gives the mean rollout reward of the first and last fifth of the iterations and their
difference; `--json` prints one object {arm: {"first", "last", "rise", "seconds"}}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from exploresft_jax import cli
from exploresft_jax.configs import tiny_cpu
from exploresft_jax.train import grpo_loop
from exploresft_jax.train.logger import read_metrics

ARMS = {
    "ppo_clip": {},
    "gspo": {"policy_loss": "gspo", "aggregation": "seq-mean-token-mean"},
    "cispo": {"policy_loss": "cispo"},
    "token_truncate": {"rollout_correction": "token_truncate"},
    "sequence_mask": {"rollout_correction": "sequence_mask"},
    "entropy_top20": {"entropy_token_fraction": 0.2},
    "overlong_penalty": {"overlong_penalty": True},
    "passk": {"advantage_estimator": "passk", "passk_k": 4},
}


def config(workdir: Path, iterations: int, arm: dict):
    c = tiny_cpu.get_config()
    c.method = "grpo"
    c.workdir = str(workdir)
    c.optim.num_steps = iterations
    c.log.plots = False
    c.log.tensorboard = False
    c.checkpoint.async_save = False
    c.checkpoint.export_hf = False
    for k, v in arm.items():
        c.grpo[k] = v
    return c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--workdir", default="runs/grpo_variants")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    work = Path(args.workdir).absolute()
    warm = work / "warmup"
    if not (warm / "sft_warmup" / "hf_export" / "config.json").exists():
        grpo_loop.sft_warmup(config(warm, args.iterations, {}))
    out = {}
    for name in args.arms:
        wd = work / name
        shutil.rmtree(wd, ignore_errors=True)
        shutil.copytree(warm / "sft_warmup", wd / "sft_warmup")
        t0 = time.perf_counter()
        grpo_loop.run(config(wd, args.iterations, ARMS[name]))
        rewards = [r["reward_mean"] for r in read_metrics(wd / "metrics.jsonl")]
        fifth = max(1, len(rewards) // 5)
        first, last = sum(rewards[:fifth]) / fifth, sum(rewards[-fifth:]) / fifth
        out[name] = {"first": first, "last": last, "rise": last - first, "seconds": time.perf_counter() - t0}
        if not args.json:
            print(f"{name:18s} reward {first:.3f} -> {last:.3f}  ({last - first:+.3f})  "
                  f"{out[name]['seconds']:.0f}s", flush=True)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
