"""Memory and time of each attention backend against the dense reference, forward + backward.

For each sequence length T, compiles `grad` of a scalar function of causal GQA attention with the shapes of
Qwen2.5-Math-1.5B (12 query heads, 2 KV heads, head dim 128), batch 1, float32 on CPU, and reports

* temp GiB: XLA's compile-time `memory_analysis().temp_size_in_bytes` (no run needed), and its ratio to dense;
* time: with `--time`, the median (and min-max spread) of `--repeats` runs per backend after one warm-up, and
  its ratio to dense (dense only where its [N, T, T] scores fit, `--max-dense-time-seq`).

With `--tpu v5e-8` (libtpu installed) the same functions are compiled for that TPU topology on this machine,
with the batch split over its chips (one row per chip, bfloat16), and the per-chip temporaries are reported:
dense, blockwise and the Pallas splash kernel. Prints a markdown table; `--json` prints one object per row.

    python scripts/bench/attention.py                                   # CPU memory, T = 1k ... 32k
    python scripts/bench/attention.py --seq 1024 2048 4096 --time       # plus CPU time
    python scripts/bench/attention.py --tpu v5e-8                       # TPU per-chip memory (compile only)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

GIB = 1024**3
TPU_SLICES = ("v4-8", "v5e-8", "v5p-8", "v6e-8")


def build(backend, seq, *, batch, heads, kv_heads, head_dim, dtype, mesh=None):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from exploresft_jax import sharding as shd
    from exploresft_jax.models.attention import attend

    def loss(q, k, v, seg):
        out = attend(q, k, v, seg, seg, backend=backend)
        return jnp.sum(out.astype(jnp.float32) * 1e-3)

    kw = {}
    if mesh is not None:
        kw = {"sharding": NamedSharding(mesh, P(("data", "fsdp")))}
    args = (jax.ShapeDtypeStruct((batch, seq, heads, head_dim), dtype, **kw),
            jax.ShapeDtypeStruct((batch, seq, kv_heads, head_dim), dtype, **kw),
            jax.ShapeDtypeStruct((batch, seq, kv_heads, head_dim), dtype, **kw),
            jax.ShapeDtypeStruct((batch, seq), jnp.int32, **kw))
    fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    if mesh is None:
        return fn.lower(*args).compile()
    with shd.use_rules(mesh, shd.TRAIN_RULES):
        return fn.lower(*args).compile()


def measure_time(compiled, seq, *, heads, kv_heads, head_dim, repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, seq, heads, head_dim)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, seq, kv_heads, head_dim)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(1, seq, kv_heads, head_dim)), jnp.float32)
    seg = jnp.ones((1, seq), jnp.int32)
    jax.block_until_ready(compiled(q, k, v, seg))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v, seg))
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), min(runs), max(runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    p.add_argument("--backends", nargs="+", default=None,
                   help="default: dense blockwise (CPU); dense blockwise splash (--tpu)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--time", action="store_true", help="also run and time each backend (CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-dense-time-seq", type=int, default=4096, help="longest T at which dense is timed")
    p.add_argument("--max-time-seq", type=int, default=8192, help="longest T at which anything is timed")
    p.add_argument("--tpu", choices=TPU_SLICES, default=None, help="compile for this TPU slice (as scripts/fit.py)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.tpu:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp

    from exploresft_jax import sharding as shd

    mesh, batch, dtype = None, 1, jnp.float32
    backends = args.backends or ["dense", "blockwise"]
    if args.tpu:
        from exploresft_jax.train.fit import FitError, resolve_target

        try:  # the same slice -> compile-only devices mapping as scripts/fit.py (megacore v4 / v5p included)
            devices = resolve_target(args.tpu).devices
        except FitError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        mesh = shd.make_mesh((1, -1, 1), devices=devices)
        batch, dtype = len(devices), jnp.bfloat16
        backends = args.backends or ["dense", "blockwise", "splash"]
    shape = dict(heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim)
    rows = []
    for seq in args.seq:
        dense_temp = dense_time = None
        for backend in backends:
            row = {"seq": seq, "backend": backend, "platform": args.tpu or jax.default_backend()}
            try:
                compiled = build(backend, seq, batch=batch, dtype=dtype, mesh=mesh, **shape)
            except Exception as e:  # the TPU compiler refuses what does not fit HBM
                row.update(fits=False, error=str(e).splitlines()[0][:160])
                rows.append(row)
                continue
            temp = compiled.memory_analysis().temp_size_in_bytes
            row.update(fits=True, temp_gib=temp / GIB)
            if backend == "dense":
                dense_temp = temp
            if dense_temp:
                row["temp_vs_dense"] = temp / dense_temp
            if args.time and not args.tpu and seq <= args.max_time_seq and (
                    backend != "dense" or seq <= args.max_dense_time_seq):
                med, lo, hi = measure_time(compiled, seq, repeats=args.repeats, **shape)
                row.update(time_s=med, time_min_s=lo, time_max_s=hi)
                if backend == "dense":
                    dense_time = med
                elif dense_time:
                    row["time_vs_dense"] = med / dense_time
            rows.append(row)
            print(json.dumps(row) if args.json else f"  T={seq} {backend}: {row.get('temp_gib', 0):.3f} GiB",
                  file=sys.stdout if args.json else sys.stderr, flush=True)
        dense_time = None
    if not args.json:
        where = f"{args.tpu}, per chip, bf16, {batch} rows" if args.tpu else "CPU, float32, 1 row"
        print(f"\nattention forward+backward, {args.heads} heads / {args.kv_heads} KV heads x {args.head_dim} "
              f"({where})\n")
        print("| T | backend | temp GiB | vs dense | time s (median, min-max) | vs dense |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            temp = f"{r['temp_gib']:.4f}" if r.get("fits") else "refused: does not fit"
            ratio = f"{r['temp_vs_dense']:.4f}" if "temp_vs_dense" in r else "-"
            t = (f"{r['time_s']:.3f} ({r['time_min_s']:.3f}-{r['time_max_s']:.3f})" if "time_s" in r else "-")
            tr = f"{r['time_vs_dense']:.2f}" if "time_vs_dense" in r else "-"
            print(f"| {r['seq']} | {r['backend']} | {temp} | {ratio} | {t} | {tr} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
