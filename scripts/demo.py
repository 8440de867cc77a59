#!/usr/bin/env python
"""End-to-end CPU demo of exploration-aware SFT, no download needed: pretrain a tiny base model on arithmetic
word problems, score and select OXA data, fine-tune with SFT, OXA, CurioSFT and entropy-regularised SFT from the
same base with the same budget, evaluate Pass@k and token entropy on held-out problems, run a short GRPO from
each, and write REPORT.md with a results table and plots.

    python scripts/demo.py [--workdir runs/demo] [--seeds 0 1 2] [--quick] [--no-grpo]

About 10 minutes on 2 CPU cores with the default single seed; each extra seed adds the fine-tuning, evaluation
and GRPO stages again (about 6 minutes). Running again in the same workdir reuses finished stages.
"""

from __future__ import annotations

import argparse
import os
import sys

from exploresft_jax import cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/demo", help="where data, runs, REPORT.md and the plots go")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning / evaluation seeds")
    p.add_argument("--quick", action="store_true", help="a reduced size (a couple of minutes; for tests)")
    p.add_argument("--no-grpo", action="store_true", help="skip the GRPO stage")
    p.add_argument("--methods", nargs="+", default=None, help="subset of: sft oxa curio entropy_reg")
    args = p.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from exploresft_jax.demo import METHODS, DemoSettings, run_demo

    methods = tuple(args.methods or METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; expected some of {list(METHODS)}")
    settings = DemoSettings.quick() if args.quick else DemoSettings.full()
    path = run_demo(settings, args.workdir, seeds=tuple(args.seeds), grpo_stage=not args.no_grpo, methods=methods)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
