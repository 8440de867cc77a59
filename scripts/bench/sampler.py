#!/usr/bin/env python
"""Decode throughput of the KV-cache sampler against transformers `generate` and a cache-free JAX loop.

    python scripts/bench/sampler.py                      # CPU: 4 layers, hidden 512, vocab 32k; batch 1, 8, 32
    python scripts/bench/sampler.py --gpu                # GPU: Qwen2.5-Math-1.5B shape, batch 1..256, roofline

CPU mode builds one random transformers Qwen2 model, saves it, and loads the same weights into JAX. Every
method decodes greedily from the same prompts (all `--prompt-len` tokens) for `--new-tokens` tokens with no stop
id, so all generate exactly batch x new tokens. Reported: generated tokens per second of the whole call
(prefill included, compilation excluded: each JAX function is warmed up on the same shapes first), best of
`--repeats` runs. The cache-free loop reruns the full forward over the fixed [batch, prompt + new] buffer at
every step (one compile); its per-step cost is constant, so it is timed over `--naive-steps` steps.

GPU mode (`--gpu`) runs a random bf16 model with the Qwen2.5-Math-1.5B shape and reports tokens/s and the
fraction of the HBM-bandwidth roofline: bytes that a decode step must read (all weights once, plus the K/V of
every filled cache position of every row) times steps per second, over the copy bandwidth measured on the same
device (a large on-device copy, read + write bytes).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="Qwen2.5-Math-1.5B shape on the accelerator, roofline")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 1,8,32; GPU 1..256)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default 32; GPU 256)")
    p.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 128; GPU 1024)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--cache-dtypes", default="float32,bfloat16", help="KV-cache dtypes to time (CPU mode)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per entry (best is reported)")
    p.add_argument("--naive-steps", type=int, default=8, help="steps timed for the cache-free loop")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-naive", action="store_true")
    return p.parse_args(argv)


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
    samplers = {dt: Sampler(model, mesh=mesh, cache_dtype=dt, max_rows=max(batches), min_prompt_bucket=plen)
                for dt in cache_dtypes}
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
        for dt, sampler in samplers.items():
            run = lambda: sampler.generate(list(prompts), max_new_tokens=new, config=Greedy())  # noqa: E731
            out = run()  # compile
            secs = _best(run, args.repeats)
            row[f"jax_{dt}"] = b * new / secs
            ref = out.tokens if ref is None else ref
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

    cols = [f"jax_{dt}" for dt in cache_dtypes]
    head = ["batch"] + [f"ours, {dt} cache (tok/s)" for dt in cache_dtypes]
    if not args.skip_hf:
        head += ["HF generate (tok/s)", "ours / HF", "greedy tokens equal"]
    if not args.skip_naive:
        head += ["no-cache JAX loop (tok/s)", "ours / no-cache"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        best = max(r[c] for c in cols)
        cells = [str(r["batch"])] + [f"{r[c]:.0f}" for c in cols]
        if not args.skip_hf:
            cells += [f"{r['hf']:.0f}", f"{best / r['hf']:.2f}x", f"{100 * r['agree']:.1f}%"]
        if not args.skip_naive:
            cells += [f"{r['naive']:.0f}", f"{best / r['naive']:.1f}x"]
        print("| " + " | ".join(cells) + " |")


def copy_bandwidth(nbytes: int = 4 << 30) -> float:
    """Measured on-device copy bandwidth in bytes/s (read + write) from a jitted elementwise copy."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a + 1.0)
    jax.block_until_ready(f(x))
    secs = _best(lambda: jax.block_until_ready(f(x)), 5)
    return 2 * nbytes / secs


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
    bw = copy_bandwidth()
    weight_bytes = cfg.num_params * 2
    kv_per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 2
    print(f"device {jax.devices()[0].device_kind}; copy bandwidth {bw / 1e9:.0f} GB/s; weights "
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


def main(argv=None):
    args = parse_args(argv)
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.gpu:
        gpu_bench(args)
    else:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        cpu_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
