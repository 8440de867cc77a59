#!/usr/bin/env python
"""End-to-end CPU demo of exploration-aware SFT, no download needed: from a small base model shipped with the
package (pretrained on arithmetic word problems whose corpus carries a dropped-carry bug), score and select OXA
data, fine-tune with SFT, OXA, CurioSFT and entropy-regularised SFT from the same base with the same budget,
evaluate Pass@k (k = 1..64), token entropy and the style mix on held-out problems, run GRPO from each, over
several seeds, and write REPORT.md with the results, the papers' claims checked and plots.

    python scripts/demo.py [--workdir runs/demo] [--seeds 0 1 2] [--quick] [--no-grpo]
    python scripts/demo.py --sweep [--record]    # rerun the validation sweep of learning rates / coefficients
    python scripts/demo.py --pretrain [--base-out DIR]   # rebuild the shipped base model from its recipe

Three seeds take about 13 minutes on 2 CPU cores. Running again in the same workdir reuses finished stages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from exploresft_jax import cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/demo", help="where data, runs, REPORT.md and the plots go")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning / evaluation / RL seeds")
    p.add_argument("--quick", action="store_true", help="a reduced size (a couple of minutes; for tests)")
    p.add_argument("--no-grpo", action="store_true", help="skip the GRPO stage")
    p.add_argument("--methods", nargs="+", default=None, help="subset of: sft oxa curio entropy_reg")
    p.add_argument("--choices", default=None, help="a sweep.json whose choices replace the recorded ones")
    p.add_argument("--base", default="", help="an HF model folder to start from instead of the shipped base")
    p.add_argument("--sweep", action="store_true", help="run the validation sweep instead of the demo")
    p.add_argument("--record", action="store_true", help="--sweep: make its choices the package's recorded ones")
    p.add_argument("--pretrain", action="store_true", help="rebuild the base model from its recipe")
    p.add_argument("--base-out", default="", help="--pretrain: where to write it (default: the shipped copy)")
    args = p.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from exploresft_jax.demo import METHODS, DemoSettings, base_model, pipeline

    methods = tuple(args.methods or METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; expected some of {list(METHODS)}")
    settings = DemoSettings.quick() if args.quick else DemoSettings.full()
    settings.base_dir = args.base
    work = Path(args.workdir)
    if args.pretrain:
        out = Path(args.base_out) if args.base_out else base_model.SHIPPED
        checks = pipeline.rebuild_base(settings, out, work)
        print(json.dumps(checks, indent=1))
        print(f"wrote {out} (requirements {'met' if base_model.meets_requirements(checks) else 'NOT met'})")
        return 0
    if args.sweep:
        res = pipeline.sweep(settings, work, record=pipeline.CHOICES if args.record else None)
        print(json.dumps(res["choices"], indent=1))
        print(f"wrote {work / 'sweep.json'}" + (f" and {pipeline.CHOICES}" if args.record else ""))
        return 0
    path = pipeline.run_demo(settings, work, seeds=tuple(args.seeds), grpo_stage=not args.no_grpo,
                             methods=methods, choices=args.choices)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
