#!/usr/bin/env python
"""Prove that a training config fits its accelerator: compile its programs (without running them) and report the
memory per chip against HBM and the attention kernel each program lowered to.

    python scripts/fit.py --config configs/oxa_tpu.py [--topology v5e-8] [--json] [--config.data.max_length=8192]
    python scripts/fit.py --config configs/grpo_gpu.py --topology h100
    python scripts/fit.py --config configs/tiny_cpu.py                     # the local devices
    python scripts/fit.py --table [--configs a.py,b.py] [--topologies v5e-8,h100] [--cells fit_cells.jsonl]

--topology: a TPU slice compiled on any host (needs libtpu: pip install libtpu==0.0.42.1): v4-8, v5e-8, v5p-8,
v6e-8, the single chips v5e-1 and v6e-1 (Colab / Kaggle-sized), or a raw topology such as v5e:4x4 (in hosts of 2x2
chips); a host of NVIDIA GPUs compiled without a GPU (needs the CUDA plugin: pip install -e ".[gpu-compile]"):
h100, h200, 8xh100, 8xh200; or `local` (this host's devices). JAX_PLATFORMS is set to cpu for compile-only targets.
Without --topology: the config's own targets (mesh.targets), else the local devices.
--preset NAME takes the model sizes from a preset of exploresft_jax/models/qwen2.py when model.path is not on this
host (default: the size model.path names, e.g. '1.5B' -> qwen2p5_math_1p5b).
--json prints one JSON object per compiled program. --min-headroom PCT exits 1 when a program leaves less than
PCT % of HBM free (a refused or oversized program always exits 1).
--max-rows / --max-pages (grpo): also report the most sampler rows (grpo.sampler_rows) / KV pages per device
(grpo.kv_pages, the paged cache sized to the HBM left) whose sampler programs keep --min-headroom (default 10)
percent free.
--table compiles every shipped config (or --configs) for every target (or --topologies) and prints a markdown table
of GiB per chip, a config's own targets in bold; a config whose mesh does not fit a target's chip count is compiled
with FSDP over them (noted). --cells FILE keeps each cell's results as JSON lines and skips cells already there
(a long table can be resumed or built in parts); --from-json FILES builds the table from earlier --json outputs.
Any config field can be overridden with --config.<path>=<value>.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if any(a.startswith(("--topology", "--table")) for a in sys.argv[1:]) and "local" not in sys.argv[1:]:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only devices; set before jax is imported

ROOT = Path(__file__).resolve().parents[1]
from exploresft_jax import configs as recipes  # noqa: E402 - after JAX_PLATFORMS is set

CONFIGS = tuple(f"configs/{name}.py" for name in recipes.NAMES if name != "base")  # every shipped config
TABLE_TARGETS = "v5e-1,v6e-1,v5e-8,v6e-8,v5p-8,h100,h200,8xh100"


def _args(argv):
    p = argparse.ArgumentParser(prog="fit.py", description=__doc__.split("\n")[0], add_help=True)
    p.add_argument("--config", help="a configs/*.py file with get_config()")
    p.add_argument("--topology", help="v4-8 | v5e-8 | v5p-8 | v6e-8 | v5e-1 | v6e-1 | raw TPU (v5e:4x4) | h100 | "
                                      "h200 | 8xh100 | 8xh200 | local; default: the config's mesh.targets")
    p.add_argument("--preset", help="model sizes from this preset when model.path is not on this host")
    p.add_argument("--json", action="store_true", help="one JSON object per compiled program")
    p.add_argument("--min-headroom", type=float, default=0.0, help="exit 1 below this free HBM percentage")
    p.add_argument("--programs", help="comma-separated subset of train_step,ref_logprobs,prefill,insert,decode")
    p.add_argument("--max-rows", action="store_true",
                   help="grpo: also search the most sampler rows whose programs fit with --min-headroom (default "
                        "10) percent free, doubling / halving from the config's grpo.sampler_rows")
    p.add_argument("--max-pages", action="store_true",
                   help="grpo: also find the most KV pages per device (grpo.kv_pages) whose sampler programs fit with "
                        "--min-headroom (default 10) percent free: the HBM left, in pages")
    p.add_argument("--table", action="store_true", help="markdown table: configs x topologies")
    p.add_argument("--configs", default=",".join(CONFIGS), help="--table: comma-separated config files")
    p.add_argument("--topologies", default=TABLE_TARGETS, help="--table: comma-separated targets")
    p.add_argument("--cells", help="--table: JSON lines of finished cells (read, skipped, appended to)")
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
        return _table(args, overrides, say)
    if not args.config:
        raise fit.FitError("--config FILE is required (e.g. --config configs/oxa_tpu.py --topology v5e-8)")
    cfg = fit.load_config(args.config, overrides)
    if args.topology is None and cfg.mesh.targets:
        import jax

        jax.config.update("jax_platforms", "cpu")  # the config's own targets are compile-only devices
    names = [args.topology] if args.topology else list(cfg.mesh.targets) or [None]
    results = []
    for name in names:
        target = fit.resolve_target(None if name == "local" else name)
        res = fit.check_config(cfg, target, cfg_name=Path(args.config).stem, preset=args.preset,
                               say=None if args.json else say,
                               programs=args.programs.split(",") if args.programs else None)
        if args.json:
            for r in res:
                print(json.dumps(r.to_json()), flush=True)
        else:
            print(fit.format_results(res))
        results += res
        if args.max_rows:
            found = fit.max_sampler_rows(cfg, target, min_headroom=args.min_headroom or 10.0, preset=args.preset,
                                         say=None if args.json else say,
                                         known=[r for r in res if r.program in fit.SAMPLER_PROGRAMS])
            if args.json:
                print(json.dumps(dict(found.to_json(), config=Path(args.config).stem, topology=target.name)))
            else:
                print(fit.format_rows_search(found, target.name, args.min_headroom or 10.0))
        if args.max_pages:
            pages = fit.max_kv_pages(cfg, target, min_headroom=args.min_headroom or 10.0, preset=args.preset,
                                     say=None if args.json else say)
            if args.json:
                print(json.dumps(dict(pages.to_json(), config=Path(args.config).stem, topology=target.name)))
            else:
                print(fit.format_pages_search(pages, target.name, args.min_headroom or 10.0))
    ok = all(r.fits and (r.headroom_pct is None or r.headroom_pct >= args.min_headroom) for r in results)
    return 0 if ok else 1


def _table(args, overrides, say) -> int:
    from exploresft_jax.train import fit

    configs = [c for c in args.configs.split(",") if c]
    names = [Path(c).stem for c in configs]
    topos = [t for t in args.topologies.split(",") if t]
    grid, own = {}, {}
    files = args.from_json.split(",") if args.from_json else ([args.cells] if args.cells else [])
    for f in files:
        if not Path(f).exists():
            continue
        for line in Path(f).read_text().splitlines():
            if line.startswith("{"):
                d = json.loads(line)
                if "program" in d:
                    grid.setdefault((d["config"], d["topology"]), []).append(fit.ProgramFit(**d))
                else:  # a cell that failed: its one-line error
                    grid[(d["config"], d["topology"])] = d["error"]
    cfgs = {}
    for c, name in zip(configs, names):
        cfgs[name] = fit.load_config(str(ROOT / c) if not Path(c).exists() else c, overrides)
        own[name] = tuple(cfgs[name].mesh.targets)
    if not args.from_json:
        for t in topos:  # one target at a time: its devices are built once
            target = None
            for name in names:
                if (name, t) in grid:
                    continue
                try:
                    target = target or fit.resolve_target(t)
                    cfg, note = fit.mesh_for(cfgs[name], len(target.devices))
                    res = fit.check_config(cfg, target, cfg_name=name, preset=args.preset, say=say)
                    for r in res:
                        r.notes += [note] if note else []
                    lines = [json.dumps(r.to_json()) for r in res]
                    say(fit.format_results(res))
                except Exception as e:  # noqa: BLE001 - one cell's failure is that cell's text
                    res = f"error: {' '.join(str(e).split())[:200]}"
                    lines = [json.dumps({"config": name, "topology": t, "error": res})]
                grid[(name, t)] = res
                if args.json:
                    print("\n".join(lines), flush=True)
                if args.cells:
                    with open(args.cells, "a") as f:
                        f.write("\n".join(lines) + "\n")
    table = fit.markdown_table(grid, names, topos, own=own)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    from exploresft_jax import cli

    sys.exit(cli.run(main))
