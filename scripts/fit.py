#!/usr/bin/env python
"""Prove that a training config fits its accelerator: compile its programs (without running them) and report the
memory per chip against HBM.

    python scripts/fit.py --config configs/oxa_tpu.py --topology v5e-8 [--json] [--config.data.max_length=8192]
    python scripts/fit.py --config configs/tiny_cpu.py                     # the local devices
    python scripts/fit.py --table [--topologies v4-8,v5e-8,v5p-8,v6e-8] [--output fit_table.md]

--topology compiles for a TPU slice on any host (needs libtpu: pip install libtpu==0.0.42.1; JAX_PLATFORMS is set
to cpu for it): v4-8, v5e-8, v5p-8, v6e-8, the single chips v5e-1 and v6e-1 (Colab / Kaggle-sized; use a mesh
such as --config.mesh.shape="(1,-1,1)" there), or a raw topology such as v5e:4x4 (in hosts of 2x2 chips). Without
it, the local devices.
--preset NAME takes the model sizes from a preset of exploresft_jax/models/qwen2.py when model.path is not on this
host (default: the size model.path names, e.g. '1.5B' -> qwen2p5_math_1p5b).
--json prints one JSON object per compiled program. --min-headroom PCT exits 1 when a program leaves less than
PCT % of HBM free (a refused program always exits 1). --table compiles every shipped TPU config (or --configs)
for every topology and prints a markdown table of GiB per chip (--from-json: from earlier --json outputs).
Any config field can be overridden with --config.<path>=<value>.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if any(a.startswith(("--topology", "--table")) for a in sys.argv[1:]):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only TPU devices; set before jax is imported

ROOT = Path(__file__).resolve().parents[1]
TPU_CONFIGS = ("configs/sft_tpu.py", "configs/oxa_tpu.py", "configs/curio_tpu.py", "configs/grpo_tpu.py")


def _args(argv):
    p = argparse.ArgumentParser(prog="fit.py", description=__doc__.split("\n")[0], add_help=True)
    p.add_argument("--config", help="a configs/*.py file with get_config()")
    p.add_argument("--topology", help="TPU slice: v4-8 | v5e-8 | v5p-8 | v6e-8 | v5e-1 | v6e-1 | raw "
                                      "(v5e:4x4); default local")
    p.add_argument("--preset", help="model sizes from this preset when model.path is not on this host")
    p.add_argument("--json", action="store_true", help="one JSON object per compiled program")
    p.add_argument("--min-headroom", type=float, default=0.0, help="exit 1 below this free HBM percentage")
    p.add_argument("--programs", help="comma-separated subset of train_step,ref_logprobs,prefill,decode")
    p.add_argument("--table", action="store_true", help="markdown table: configs x topologies")
    p.add_argument("--configs", default=",".join(TPU_CONFIGS), help="--table: comma-separated config files")
    p.add_argument("--topologies", default="v4-8,v5e-8,v5p-8,v6e-8", help="--table: comma-separated slices")
    p.add_argument("--output", help="--table: also write the markdown here")
    p.add_argument("--from-json", help="--table: build it from these --json outputs (comma-separated files) "
                                       "instead of compiling")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    return args, rest


def main(argv=None) -> int:
    args, overrides = _args(sys.argv[1:] if argv is None else list(argv))
    from exploresft_jax.train import fit

    say = (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.table:
        configs = [c for c in args.configs.split(",") if c]
        topos = [t for t in args.topologies.split(",") if t]
        grid = {}
        if args.from_json:
            for f in args.from_json.split(","):
                for line in Path(f).read_text().splitlines():
                    if line.startswith("{"):
                        r = fit.ProgramFit(**json.loads(line))
                        grid.setdefault((r.config, r.topology), []).append(r)
        targets = {} if args.from_json else {t: fit.resolve_target(t) for t in topos}
        for c in configs if not args.from_json else ():
            cfg = fit.load_config(str(ROOT / c) if not Path(c).exists() else c, overrides)
            for t in topos:
                name = Path(c).stem
                try:
                    res = fit.check_config(cfg, targets[t], cfg_name=name, preset=args.preset, say=say)
                except Exception as e:  # noqa: BLE001 - one cell's failure is that cell's text
                    res = f"error: {' '.join(str(e).split())[:200]}"
                grid[(name, t)] = res
                if not isinstance(res, str):
                    say(fit.format_results(res))
                    if args.json:
                        for r in res:
                            print(json.dumps(r.to_json()), flush=True)
        table = fit.markdown_table(grid, [Path(c).stem for c in configs], topos)
        print(table)
        if args.output:
            Path(args.output).write_text(table + "\n")
        return 0
    if not args.config:
        raise fit.FitError("--config FILE is required (e.g. --config configs/oxa_tpu.py --topology v5e-8)")
    cfg = fit.load_config(args.config, overrides)
    target = fit.resolve_target(args.topology)
    results = fit.check_config(cfg, target, cfg_name=Path(args.config).stem, preset=args.preset,
                               say=None if args.json else say,
                               programs=args.programs.split(",") if args.programs else None)
    if args.json:
        for r in results:
            print(json.dumps(r.to_json()), flush=True)
    else:
        print(fit.format_results(results))
    ok = all(r.fits and (r.headroom_pct is None or r.headroom_pct >= args.min_headroom) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    from exploresft_jax import cli

    sys.exit(cli.run(main))
