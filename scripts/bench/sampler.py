#!/usr/bin/env python
"""Decode throughput of the KV-cache sampler against transformers `generate` and a cache-free JAX loop.

    python scripts/bench/sampler.py                      # CPU: 4 layers, hidden 512, vocab 32k; batch 1, 8, 32
    python scripts/bench/sampler.py --gpu                # GPU: Qwen2.5-Math-1.5B shape, batch 1..256, roofline
    python scripts/bench/sampler.py --long-tail [--json] # continuous vs static batching, long-tailed lengths
    python scripts/bench/sampler.py --roofline [--json]  # batch-1 decode vs the memory-bandwidth roofline only

CPU mode builds one random transformers Qwen2 model, saves it, and loads the same weights into JAX. Every
method decodes greedily from the same prompts (all `--prompt-len` tokens) for `--new-tokens` tokens with no stop
id, so all generate exactly batch x new tokens. Reported: generated tokens per second of the whole call
(prefill included, compilation excluded: each JAX function is warmed up on the same shapes first), best of
`--repeats` runs. The cache-free loop reruns the full forward over the fixed [batch, prompt + new] buffer at
every step (one compile); its per-step cost is constant, so it is timed over `--naive-steps` steps.

GPU mode (`--gpu`) runs a random bf16 model with the Qwen2.5-Math-1.5B shape and reports tokens/s and the
fraction of the HBM-bandwidth roofline: bytes that a decode step must read (all weights once, plus the K/V of
every filled cache position of every row) times steps per second, over the read bandwidth measured on the same
device (a jitted sum over a 4 GiB array).

Long-tail mode (`--long-tail`) compares the two sampler engines on a GRPO-like rollout: `--prompts` prompts
(lengths uniform in [`--prompt-min`, `--prompt-max`]) x `--n` samples, decoded greedily with `--slots` decode
rows (static: batches of slots // n prompts). The response lengths are forced deterministically through
per-row token limits (`max_new_tokens` as a list; no stop ids), drawn once from a seeded long-tailed mix:
`--short-frac` of the rows uniform in [max_new/32, max_new/8], `--long-frac` exactly max_new, the rest uniform
in [max_new/8, max_new/2] (so most rows stop early and a few run to the limit, as in RL rollouts where most
answers are short and a few ramble to the cap). Reported: generated tokens per second of each engine
(compilation excluded by a warm-up run of the same mix) as the median and min..max over `--repeats` runs,
whether the greedy tokens of the two engines are identical, and the batch-1 roofline: bytes a decode step must
read (every weight once, plus the K/V of the filled cache) over the read bandwidth measured here (a jitted
sum over a 512 MiB array, on XLA's thread pool; the copy figures, read + write bytes, are reported beside it),
for the default CPU-mode model (`--roof-*`), so batch-1 decode speed is shown as a fraction of the physical
limit. `--kv-pages N` also times the continuous engine on a paged KV cache of N pages of 16 entries
(`--paged-slots` decode rows, default `--slots`) and reports its speed over the dense continuous engine's, the
two caches' KV bytes, whether its greedy tokens equal the dense engine's, and its preemptions. `--json` prints one
JSON object instead of the tables.

Roofline mode (`--roofline`) runs only that batch-1 measurement (no long-tail mix): `--repeats` timed runs per
engine (median reported, every run's tok/s listed in the JSON), for the sampler's default layer weights and, with
`--roof-layers both`, also for the stacked ones (`Sampler(unstack_layers=False)`: the layer loop a `lax.scan`
over [L, ...] arrays, whose weight slices XLA's CPU compiler copies on every step), so the two layouts are timed
in one process under the same load. JSON keys: `batch1_<engine>[_stacked]_roofline_fraction` (tok/s over
roofline tok/s), `..._tok_s` (median), `..._tok_s_runs`.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The CPU-mode model's shape (`_random_model`): also `tunix_sampler.py`'s."""
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=32000)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="Qwen2.5-Math-1.5B shape on the accelerator, roofline")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 1,8,32; GPU 1..256)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default 32; GPU 256)")
    p.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 128; GPU 1024)")
    add_model_args(p)
    p.add_argument("--cache-dtypes", default="float32,bfloat16", help="KV-cache dtypes to time (CPU mode)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per entry (default 2, best reported; long-tail mode 3 and roofline mode 5, "
                        "median and spread)")
    p.add_argument("--naive-steps", type=int, default=8, help="steps timed for the cache-free loop")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--engines", default="continuous,static", help="sampler engines to time (CPU mode)")
    lt = p.add_argument_group("long-tail mode")
    lt.add_argument("--long-tail", action="store_true", help="continuous vs static batching on a long-tailed mix")
    lt.add_argument("--json", action="store_true", help="long-tail and roofline modes: print one JSON object")
    lt.add_argument("--prompts", type=int, default=64)
    lt.add_argument("--n", type=int, default=8, help="samples per prompt")
    lt.add_argument("--slots", type=int, default=64, help="decode rows (max_rows) of both engines")
    lt.add_argument("--max-new", type=int, default=128, help="the longest response")
    lt.add_argument("--prompt-min", type=int, default=16)
    lt.add_argument("--prompt-max", type=int, default=64)
    lt.add_argument("--short-frac", type=float, default=0.8)
    lt.add_argument("--long-frac", type=float, default=0.05)
    lt.add_argument("--lt-layers", type=int, default=2)
    lt.add_argument("--lt-hidden", type=int, default=256)
    lt.add_argument("--lt-intermediate", type=int, default=704)
    lt.add_argument("--lt-vocab", type=int, default=8192)
    lt.add_argument("--decode-chunk", type=int, default=32, help="continuous engine: steps per jitted chunk")
    lt.add_argument("--refill-min", type=int, default=1, help="continuous engine: free slots before a refill")
    lt.add_argument("--kv-pages", type=int, default=0,
                    help="> 0: also time the continuous engine on a paged KV cache of this many pages of 16")
    lt.add_argument("--paged-slots", type=int, default=0, help="decode rows of the paged run (default: --slots)")
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--skip-roofline", action="store_true")
    lt.add_argument("--roof-new", type=int, default=128, help="tokens decoded in the batch-1 roofline run")
    rf = p.add_argument_group("roofline mode")
    rf.add_argument("--roofline", action="store_true", help="only the batch-1 roofline measurement")
    rf.add_argument("--roof-layers", choices=("default", "both"), default="default",
                    help="both: also time the stacked layer weights (unstack_layers=False)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.roofline else 3 if args.long_tail else 2
    return args


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def naive_greedy_step_fn(graphdef):
    """Jitted cache-free greedy step: full forward over [B, T]; samples position cur from the hidden at cur - 1."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @functools.partial(jax.jit, donate_argnums=(1,))
    def step(params, buf, cur):
        model = nnx.merge(graphdef, params)
        b, t = buf.shape
        pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        hidden = model(buf, pos)  # causal: the unwritten tail never influences position cur - 1
        h = jax.lax.dynamic_slice_in_dim(hidden, cur - 1, 1, axis=1)
        tok = jnp.argmax(model.logits(h)[:, 0], axis=-1).astype(buf.dtype)
        return jax.lax.dynamic_update_slice_in_dim(buf, tok[:, None], cur, axis=1)

    return step


def cpu_bench(args):
    import jax
    import numpy as np
    import torch
    from flax import nnx
    from transformers import Qwen2Config as HFConfig
    from transformers import Qwen2ForCausalLM

    from exploresft_jax import sharding as shd
    from exploresft_jax.models import hf
    from exploresft_jax.sampling import Greedy, Sampler

    batches = [int(b) for b in (args.batches or "1,8,32").split(",")]
    plen, new = args.prompt_len or 32, args.new_tokens or 128
    torch.manual_seed(0)
    hf_cfg = HFConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      tie_word_embeddings=True, max_position_embeddings=4096)
    torch_model = Qwen2ForCausalLM(hf_cfg).eval()
    tmp = tempfile.mkdtemp()
    torch_model.save_pretrained(tmp)
    model = hf.load_hf_model(tmp, dtype="float32")
    mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    cache_dtypes = args.cache_dtypes.split(",")
    engines = args.engines.split(",")
    samplers = {(eng, dt): Sampler(model, mesh=mesh, cache_dtype=dt, max_rows=max(batches), min_prompt_bucket=plen,
                                   engine=eng)
                for eng in engines for dt in cache_dtypes}
    graphdef, params = nnx.split(model)
    naive = naive_greedy_step_fn(graphdef)
    print(f"model: {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, {hf_cfg.num_attention_heads} heads"
          f" / {args.kv_heads} KV heads; float32 compute; prompt {plen}, new {new}; torch threads "
          f"{torch.get_num_threads()}, jax devices {jax.devices()}", file=sys.stderr)
    rows = []
    rng = np.random.default_rng(0)
    for b in batches:
        prompts = rng.integers(0, args.vocab, (b, plen))
        row = {"batch": b}
        ref = None
        by_dtype = {}
        for (eng, dt), sampler in samplers.items():
            run = lambda: sampler.generate(list(prompts), max_new_tokens=new, config=Greedy())  # noqa: E731
            out = run()  # compile
            secs = _best(run, args.repeats)
            row[f"jax_{eng}_{dt}"] = b * new / secs
            ref = out.tokens if ref is None else ref
            by_dtype.setdefault(dt, []).append(out.tokens)
        row["engines_equal"] = all(all((t == ts[0]).all() for t in ts) for ts in by_dtype.values())
        if not args.skip_hf:
            ids = torch.tensor(prompts)
            with torch.no_grad():
                gen = lambda: torch_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),  # noqa: E731
                                                   do_sample=False, max_new_tokens=new, min_new_tokens=new,
                                                   pad_token_id=0, eos_token_id=None)
                gen_out = gen()
                secs = _best(gen, args.repeats)
            row["hf"] = b * new / secs
            row["agree"] = float(np.mean(gen_out[:, plen:].numpy() == ref))
        if not args.skip_naive:
            buf = np.zeros((b, plen + new), np.int32)
            buf[:, :plen] = prompts
            buf_dev = naive(params, jax.numpy.asarray(buf), plen)  # compile
            jax.block_until_ready(buf_dev)
            t = time.perf_counter()
            for i in range(args.naive_steps):
                buf_dev = naive(params, buf_dev, plen + 1 + i)
            jax.block_until_ready(buf_dev)
            row["naive"] = b * args.naive_steps / (time.perf_counter() - t)
        rows.append(row)
        print(row, file=sys.stderr)

    cols = [f"jax_{eng}_{dt}" for eng in engines for dt in cache_dtypes]
    head = ["batch"] + [f"ours {eng}, {dt} cache (tok/s)" for eng in engines for dt in cache_dtypes]
    head += ["engines: same tokens"]
    if not args.skip_hf:
        head += ["HF generate (tok/s)", "ours / HF", "greedy tokens equal"]
    if not args.skip_naive:
        head += ["no-cache JAX loop (tok/s)", "ours / no-cache"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        best = max(r[c] for c in cols)
        cells = [str(r["batch"])] + [f"{r[c]:.0f}" for c in cols] + [str(r["engines_equal"])]
        if not args.skip_hf:
            cells += [f"{r['hf']:.0f}", f"{best / r['hf']:.2f}x", f"{100 * r['agree']:.1f}%"]
        if not args.skip_naive:
            cells += [f"{r['naive']:.0f}", f"{best / r['naive']:.1f}x"]
        print("| " + " | ".join(cells) + " |")


def read_bandwidth(nbytes: int = 1 << 29, repeats: int = 5) -> float:
    """Read bandwidth of the default device in bytes/s: a jitted sum over a large array (XLA's thread pool on
    CPU), best of `repeats`. A decode step's traffic is reads (every weight once, the cache's filled part) with
    a few KB written, so this, not a copy's read + write figure, is its roofline's bandwidth."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    jax.block_until_ready(f(x))
    return nbytes / _best(lambda: jax.block_until_ready(f(x)), repeats)


def gpu_bench(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from exploresft_jax import sharding as shd
    from exploresft_jax.models.qwen2 import init_model, qwen2p5_math_1p5b
    from exploresft_jax.sampling import Greedy, Sampler

    batches = [int(b) for b in (args.batches or "1,2,4,8,16,32,64,128,256").split(",")]
    plen, new = args.prompt_len or 256, args.new_tokens or 1024
    cfg = qwen2p5_math_1p5b(dtype="bfloat16", param_dtype="bfloat16")
    mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = init_model(cfg, seed=0, mesh=mesh, rules=shd.sample_rules())
    sampler = Sampler(model, mesh=mesh, cache_dtype="bfloat16", max_rows=max(batches), min_prompt_bucket=plen)
    bw = read_bandwidth(4 << 30)
    weight_bytes = cfg.num_params * 2
    kv_per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 2
    print(f"device {jax.devices()[0].device_kind}; read bandwidth {bw / 1e9:.0f} GB/s; weights "
          f"{weight_bytes / 1e9:.2f} GB; KV {kv_per_token / 1024:.0f} KiB/token; prompt {plen}, new {new}",
          file=sys.stderr)
    print("| batch | tokens/s | ms/step | bytes read/step (GB) | roofline fraction |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for b in batches:
        prompts = list(rng.integers(0, cfg.vocab_size, (b, plen)))
        run = lambda: sampler.generate(prompts, max_new_tokens=new, config=Greedy())  # noqa: E731
        run()
        secs = _best(run, args.repeats)
        step = secs / new
        avg_filled = plen + new / 2
        step_bytes = weight_bytes + b * avg_filled * kv_per_token
        frac = step_bytes / step / bw
        print(f"| {b} | {b * new / secs:.0f} | {1e3 * step:.2f} | {step_bytes / 1e9:.2f} | {frac:.2f} |", flush=True)
    del jnp


def _timed(fns: dict, repeats: int, before_repeat=None) -> dict:
    """{name: wall seconds of `repeats` calls}: one untimed warm-up call each, then the functions take turns in
    every repeat, so a load change on a shared machine hits all of them alike. before_repeat: called (untimed)
    at the start of every repeat."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        if before_repeat is not None:
            before_repeat()
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def host_bandwidth(nbytes: int = 1 << 29) -> dict:
    """Host memory bandwidth in GB/s, once: `read_bandwidth` (`bandwidth_gb_s`; `roofline` measures it again
    before each of its repeats) and, for reference, a large copy's read + write bytes per second (numpy, one
    thread; a jitted XLA elementwise copy, its thread pool). On this kind of host the copy figure is about 1.5x
    the read one (streaming writes are cheap), so a roofline on it would ask a read-only loop for more than the
    memory delivers to reads."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np_secs = _best(lambda: np.copyto(dst, src), 5)
    f = jax.jit(lambda a: a + 1.0, donate_argnums=0)  # donated: the output reuses the buffer (no page faults)
    box = [jax.block_until_ready(f(jnp.ones((nbytes // 4,), jnp.float32)))]

    def step():
        box[0] = jax.block_until_ready(f(box[0]))

    jax_secs = _best(step, 5)
    read = read_bandwidth(nbytes) / 1e9
    return {"bandwidth_gb_s": read, "read_gb_s": read, "numpy_copy_gb_s": 2 * nbytes / np_secs / 1e9,
            "xla_copy_gb_s": 2 * nbytes / jax_secs / 1e9}


def long_tail_mix(args):
    """(prompts, per-row limits [P * n]) of the long-tail mode (see the module docstring); deterministic."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    prompts = [list(rng.integers(1, args.lt_vocab, int(rng.integers(args.prompt_min, args.prompt_max + 1))))
               for _ in range(args.prompts)]
    rows = args.prompts * args.n
    m = args.max_new
    u = rng.random(rows)
    short = rng.integers(max(1, m // 32), max(1, m // 8) + 1, rows)
    medium = rng.integers(max(1, m // 8), max(1, m // 2) + 1, rows)
    limits = np.where(u < args.short_frac, short, np.where(u < 1.0 - args.long_frac, medium, m))
    return prompts, limits.astype(np.int32)


def _random_model(layers, hidden, inter, heads, kv_heads, vocab, init_scale):
    from exploresft_jax.models.qwen2 import Qwen2Config, init_model

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
                      num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads, tie_word_embeddings=True,
                      initializer_range=init_scale, dtype="float32", param_dtype="float32")
    return init_model(cfg, seed=0), cfg


def roofline(args) -> dict:
    """Batch-1 greedy decode of the default CPU-mode model with each engine, against the bandwidth roofline.

    The read bandwidth is measured again right before every repeat (`read_bandwidth`, best of 3), and each run
    is compared with its own repeat's figure: on a shared host the bandwidth drifts by 10-20% between minutes,
    which a single figure taken before all runs would turn into noise in every fraction. Reported: the median
    of the per-run fractions (and of the per-repeat bandwidths, `roofline_bandwidth_gb_s`)."""
    import jax
    import numpy as np

    from exploresft_jax import sharding as shd
    from exploresft_jax.sampling import Greedy, Sampler

    model, cfg = _random_model(args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab,
                               0.02)
    mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    plen, new = args.prompt_len or 32, args.roof_new
    prompt = [list(np.random.default_rng(1).integers(1, cfg.vocab_size, plen))]
    weight_bytes = cfg.num_params * 4
    kv_per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4
    step_bytes = weight_bytes + (plen + new / 2) * kv_per_token
    out = {"roofline_model": f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
                             f"{cfg.num_params / 1e6:.1f} M params float32",
           "roofline_bytes_per_token": step_bytes, "roofline_repeats": args.repeats}
    layouts = {"": None}
    if getattr(args, "roof_layers", "default") == "both":
        layouts["_stacked"] = False
    samplers = {f"{eng}{suffix}": Sampler(model, mesh=mesh, cache_dtype="float32", max_rows=1, min_prompt_bucket=plen,
                                          engine=eng, unstack_layers=unstack)
                for suffix, unstack in layouts.items() for eng in ("continuous", "static")}
    out["roofline_unstacked_layers"] = samplers["continuous"].unstack_layers
    bws = []  # bytes/s, one per repeat
    times = _timed({name: functools.partial(s.generate, prompt, max_new_tokens=new, config=Greedy())
                    for name, s in samplers.items()}, args.repeats, lambda: bws.append(read_bandwidth(repeats=3)))
    out["roofline_bandwidth_gb_s"] = statistics.median(bws) / 1e9
    out["roofline_bandwidth_gb_s_runs"] = [b / 1e9 for b in bws]
    out["roofline_tok_s"] = statistics.median(bws) / step_bytes
    for name, ts in times.items():
        out[f"batch1_{name}_tok_s"] = new / statistics.median(ts)
        out[f"batch1_{name}_tok_s_runs"] = [new / t for t in ts]
        fractions = [new / t * step_bytes / b for t, b in zip(ts, bws)]
        out[f"batch1_{name}_roofline_fraction"] = statistics.median(fractions)
        out[f"batch1_{name}_roofline_fraction_runs"] = fractions
    return out


def _print_roofline(res: dict) -> None:
    bws = ", ".join(f"{b:.1f}" for b in res["roofline_bandwidth_gb_s_runs"])
    print(f"\nbatch-1 roofline ({res['roofline_model']}): read bandwidth {res['roofline_bandwidth_gb_s']:.1f} GB/s "
          f"(per repeat: {bws}; copies, read + write: numpy {res['numpy_copy_gb_s']:.1f}, "
          f"XLA {res['xla_copy_gb_s']:.1f}), {res['roofline_bytes_per_token'] / 1e6:.1f} MB read per token -> "
          f"{res['roofline_tok_s']:.0f} tok/s; medians of {res['roofline_repeats']} runs")
    names = [k[len("batch1_"):-len("_roofline_fraction")] for k in res if k.endswith("_roofline_fraction")]
    for name in names:
        runs = ", ".join(f"{t:.0f} ({100 * f:.0f}%)" for t, f in zip(res[f"batch1_{name}_tok_s_runs"],
                                                                    res[f"batch1_{name}_roofline_fraction_runs"]))
        print(f"  {name}: {res[f'batch1_{name}_tok_s']:.0f} tok/s, "
              f"{100 * res[f'batch1_{name}_roofline_fraction']:.0f}% of the roofline (runs: {runs})")


def roofline_bench(args):
    bw = host_bandwidth()
    res = dict(bw)
    res.update(roofline(args))
    if args.json:
        print(json.dumps(res))
    else:
        _print_roofline(res)


PAGE = 16  # entries per page of the paged runs


def _paged_figures(args, cfg, samplers, outs, prompts, limits) -> dict:
    """The paged run against the dense continuous one: speed ratio, KV bytes of both caches (the arrays the
    engines allocate: the dense slot caches [L, slots, K, capacity, H] and the page pool [1, L, pages, K, 16, H]
    on the one device, K and V, float32), greedy equality and the run's counters."""
    import numpy as np

    from exploresft_jax.sampling import continuous as cont

    lens = np.repeat([len(x) for x in prompts], args.n)
    shapes = cont.engine_shapes(samplers["continuous"], int(lens.max()), int((lens + limits).max()), len(lens),
                                args.n)
    entry = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4  # K and V bytes of one cache entry
    p, d = outs["paged"], outs["continuous"]
    dense, paged = shapes.slots * shapes.capacity * entry / 2 ** 20, args.kv_pages * PAGE * entry / 2 ** 20
    return {"kv_pages": args.kv_pages, "page_size": PAGE, "paged_slots": samplers["paged"].max_rows,
            "dense_cache_mib": dense, "paged_cache_mib": paged,
            "paged_cache_fraction": paged / dense,
            "paged_greedy_equal": bool(np.array_equal(p.tokens, d.tokens) and np.array_equal(p.lengths, d.lengths)),
            "paged_stats": vars(samplers["paged"].last_stats)}


def long_tail_bench(args):
    import jax
    import numpy as np

    from exploresft_jax import sharding as shd
    from exploresft_jax.sampling import Greedy, Sampler, Temperature

    prompts, limits = long_tail_mix(args)
    model, cfg = _random_model(args.lt_layers, args.lt_hidden, args.lt_intermediate, 4, 2, args.lt_vocab,
                               0.4 / args.lt_hidden ** 0.5)
    mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    kw = dict(cache_dtype="float32", max_rows=args.slots, min_prompt_bucket=16, decode_chunk=args.decode_chunk,
              refill_min=args.refill_min)
    samplers = {eng: Sampler(model, mesh=mesh, engine=eng, **kw) for eng in ("continuous", "static")}
    if args.kv_pages:
        samplers["paged"] = Sampler(model, mesh=mesh, kv_pages=args.kv_pages, page_size=PAGE,
                                    **dict(kw, max_rows=args.paged_slots or args.slots))
    tokens = int(limits.sum())
    res = {"prompts": args.prompts, "n": args.n, "slots": args.slots, "max_new": args.max_new,
           "generated_tokens": tokens, "mean_length": float(limits.mean()),
           "rows_at_limit": int((limits == args.max_new).sum()), "repeats": args.repeats,
           "model": f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
                    f"{cfg.num_params / 1e6:.2f} M params float32",
           "decode_chunk": args.decode_chunk, "refill_min": args.refill_min, "jax_devices": str(jax.devices())}
    outs = {}

    def run(eng):
        outs[eng] = samplers[eng].generate(prompts, n=args.n, max_new_tokens=limits, config=Greedy())

    times = _timed({eng: functools.partial(run, eng) for eng in samplers}, args.repeats)
    for eng, ts in times.items():
        rates = [tokens / t for t in ts]
        res[f"{eng}_tok_s"] = statistics.median(rates)
        res[f"{eng}_tok_s_min"], res[f"{eng}_tok_s_max"] = min(rates), max(rates)
        res[f"{eng}_seconds"] = statistics.median(ts)
    res["continuous_stats"] = vars(samplers["continuous"].last_stats)
    c, st = outs["continuous"], outs["static"]
    if args.kv_pages:
        res.update(_paged_figures(args, cfg, samplers, outs, prompts, limits))
        res["paged_vs_dense"] = res["paged_tok_s"] / res["continuous_tok_s"]
    res["greedy_equal"] = bool(np.array_equal(c.tokens, st.tokens) and np.array_equal(c.lengths, st.lengths))
    res["greedy_rows_equal"] = float(np.mean((c.tokens == st.tokens).all(axis=1)))
    res["speedup"] = res["continuous_tok_s"] / res["static_tok_s"]
    # seeded sampling: one run per engine with the same key
    samp = {eng: s.generate(prompts, n=args.n, max_new_tokens=limits, config=Temperature(1.0), key=args.seed)
            for eng, s in samplers.items()}
    res["sampled_equal"] = all(np.array_equal(samp["continuous"].tokens, s.tokens) for s in samp.values())
    if not args.skip_roofline:
        bw = host_bandwidth()
        res.update(bw)
        res.update(roofline(args))
    if args.json:
        print(json.dumps(res))
        return
    print(f"long-tail mix: {args.prompts} prompts x {args.n} samples, {args.slots} slots, lengths: mean "
          f"{res['mean_length']:.1f}, {res['rows_at_limit']} rows at the limit {args.max_new}; model {res['model']}; "
          f"{tokens} tokens per run; {args.repeats} repeats", file=sys.stderr)
    print("| engine | tokens/s median | min..max | seconds (median) |")
    print("|---|---|---|---|")
    for eng in samplers:
        print(f"| {eng} | {res[f'{eng}_tok_s']:.0f} | {res[f'{eng}_tok_s_min']:.0f}..{res[f'{eng}_tok_s_max']:.0f} "
              f"| {res[f'{eng}_seconds']:.2f} |")
    print(f"\ncontinuous / static: {res['speedup']:.2f}x; greedy tokens identical: {res['greedy_equal']}; "
          f"seeded samples identical: {res['sampled_equal']}; continuous run: {res.get('continuous_stats')}")
    if args.kv_pages:
        print(f"paged ({args.kv_pages} pages of {PAGE}, {res['paged_slots']} slots): "
              f"{res['paged_vs_dense']:.2f}x the dense slot caches' speed with "
              f"{100 * res['paged_cache_fraction']:.0f}% of their KV bytes ({res['paged_cache_mib']:.1f} vs "
              f"{res['dense_cache_mib']:.1f} MiB); greedy tokens identical to dense: {res['paged_greedy_equal']}; "
              f"{res['paged_stats']['preemptions']} preemptions")
    if not args.skip_roofline:
        _print_roofline(res)


def main(argv=None):
    args = parse_args(argv)
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.gpu:
        gpu_bench(args)
    elif args.long_tail:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        long_tail_bench(args)
    elif args.roofline:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        roofline_bench(args)
    else:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        cpu_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
