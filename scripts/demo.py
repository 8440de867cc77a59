#!/usr/bin/env python
"""End-to-end CPU demo of exploration-aware SFT, no download needed: from a small base model shipped with the
package (pretrained on arithmetic word problems, solving the easy ones right and dropping carries on the harder
ones), score and select OXA data from a teacher that solves every tier, fine-tune with SFT, OXA, OXA-MLE and
CurioSFT from the same base with the same budget, evaluate Pass@k, Pass@1 by tier and token entropy on held-out
problems over several seeds, check the premise gates, judge the papers' claims with Welch's t test, and write
REPORT.md, results.json and plots.

    python scripts/demo.py [--workdir runs/demo] [--seeds 0 1 2] [--full] [--quick]
    python scripts/demo.py --sweep [--record]    # rerun the validation sweep of learning rates / coefficients
    python scripts/demo.py --pretrain [--base-out DIR]   # rebuild the shipped base model from its recipe
    python scripts/demo.py --readme runs/demo   # README's demo section and docs/demo/ from that run
    python scripts/demo.py --publish-full runs/full   # docs/demo/full/ from a --full run

--full adds held-out problems, entropy-regularised SFT and GRPO from every start (the after-RL claims).
Running again in the same workdir reuses finished stages.
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
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="fine-tuning / evaluation / RL seeds (default: 0 1 2; with --full 0 1 2 3 4)")
    p.add_argument("--full", action="store_true",
                   help="more held-out problems, entropy-regularised SFT and GRPO from every start")
    p.add_argument("--quick", action="store_true", help="a reduced size (a couple of minutes; for tests)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="arms to fine-tune, some of: sft oxa oxa_mle curio entropy_reg (default: all with --full, "
                        "else all but entropy_reg)")
    p.add_argument("--choices", default=None, help="a sweep.json whose choices replace the recorded ones")
    p.add_argument("--base", default="", help="an HF model folder to start from instead of the shipped base")
    p.add_argument("--sweep", action="store_true", help="run the validation sweep instead of the demo")
    p.add_argument("--record", action="store_true", help="--sweep: make its choices the package's recorded ones")
    p.add_argument("--pretrain", action="store_true", help="rebuild the base model from its recipe")
    p.add_argument("--readme", default="", metavar="DIR",
                   help="write README's demo section, docs/demo/ plots and results.json from the run in DIR")
    p.add_argument("--publish-full", default="", metavar="DIR",
                   help="write a --full run's REPORT.md, plots and results.json from DIR to docs/demo/full/")
    p.add_argument("--base-out", default="", help="--pretrain: where to write it (default: the shipped copy)")
    args = p.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from exploresft_jax.demo import DEFAULT_METHODS, METHODS, DemoSettings, base_model, pipeline

    methods = tuple(args.methods or (METHODS if args.full or args.quick else DEFAULT_METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; expected some of {list(METHODS)}")
    settings = DemoSettings.quick() if args.quick else DemoSettings.full() if args.full else DemoSettings.default()
    settings.base_dir = args.base
    work = Path(args.workdir)
    if args.readme:
        readme = pipeline.publish(Path(args.readme), Path(__file__).resolve().parents[1])
        print(f"wrote {readme} and {readme.parent / 'docs' / 'demo'}")
        return 0
    if args.publish_full:
        out = pipeline.publish(Path(args.publish_full), Path(__file__).resolve().parents[1], full=True)
        print(f"wrote {out}")
        return 0
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
    seeds = tuple(args.seeds or (range(5) if args.full else range(3)))
    path = pipeline.run_demo(settings, work, seeds=seeds, methods=methods, choices=args.choices)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
