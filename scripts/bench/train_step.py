#!/usr/bin/env python
"""Train-step throughput: our jitted SFT step against transformers + PyTorch AdamW on the same model and batch,
and achieved FLOP/s against this machine's own measured matmul peak, all in one run.

    python scripts/bench/train_step.py              # CPU: small model, float32 (layer scan, and unrolled)
    python scripts/bench/train_step.py --gpu        # one GPU: Qwen2.5-Math-1.5B shape, T=4096, bfloat16
    python scripts/bench/train_step.py --packing    # plus real tokens/s with and without example packing

Prints a Markdown table. MFU = model FLOPs (6N per token + causal attention) per second / measured peak.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time


def matmul_peak(dtype, n: int, reps: int = 10) -> float:
    """FLOP/s of a square matmul on the default device (the machine's practical peak for that dtype)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bench_ours(mcfg, batch: int, seq: int, steps: int, chunk: int) -> float:
    """Seconds per step of the jitted SFT step (AdamW, clipping), after compilation."""
    import jax
    import ml_collections
    import numpy as np

    from exploresft_jax.models.qwen2 import init_model
    from exploresft_jax.train.optim import make_optimizer
    from exploresft_jax.train.step import StepConfig, init_train_state, train_step

    optim = ml_collections.ConfigDict(dict(lr=1e-4, schedule="constant", warmup_ratio=0.0, warmup_steps=0,
                                           min_lr_ratio=0.0, cosine_horizon_factor=1.0, b1=0.9, b2=0.95, eps=1e-8,
                                           weight_decay=0.0, clip_norm=1.0))
    sc = StepConfig(method="sft", chunk_size=chunk, vocab_chunk_size=8192)
    tx, schedule = make_optimizer(optim, 1000)
    graphdef, state = init_train_state(init_model(mcfg, seed=0), tx, sc)
    fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, sc=sc), donate_argnums=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, mcfg.vocab_size, (1, batch, seq)).astype(np.int32)
    b = {"tokens": tokens, "labels": np.roll(tokens, -1, axis=-1), "loss_mask": np.ones_like(tokens),
         "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), tokens.shape).copy(),
         "segment_ids": np.ones_like(tokens), "is_negative": np.zeros((1, batch), np.int32),
         "weight": np.ones((1, batch), np.float32)}
    b = jax.device_put(b)
    state, m = fn(state, b)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = fn(state, b)
    jax.block_until_ready(m)
    return (time.perf_counter() - t) / steps


def bench_packing(mcfg, seq: int, steps: int, chunk: int, examples: int, rows_per_micro: int, seed: int = 0):
    """Real (non-padding) tokens/s of the SFT step on examples with long-tailed lengths (log-normal, median
    0.18 T, p95 about 0.6 T, capped at T), one example per row ("none") against example-count packing
    ("examples"), the same examples per step. Each step shape is compiled in a first pass over the steps; the
    second pass is timed. Returns {mode: (real tokens/s, padding fraction, seconds per step)}."""
    import jax
    import ml_collections
    import numpy as np

    from exploresft_jax.data.pipeline import StepSource, TokenizedSet
    from exploresft_jax.models.qwen2 import init_model
    from exploresft_jax.train.optim import make_optimizer
    from exploresft_jax.train.step import StepConfig, init_train_state, train_step

    rng = np.random.default_rng(seed)
    median = 0.18 * seq
    lengths = np.clip(rng.lognormal(np.log(median), np.log(3.4) / 1.645, examples * steps), 16, seq).astype(int)
    ids = [rng.integers(0, mcfg.vocab_size, n).astype(np.int32) for n in lengths]
    targets = [(np.arange(n) >= n // 10).astype(np.int32) for n in lengths]  # a 10% prompt
    pool = TokenizedSet(ids, targets, np.ones(len(ids), np.float32))
    optim = ml_collections.ConfigDict(dict(lr=1e-4, schedule="constant", warmup_ratio=0.0, warmup_steps=0,
                                           min_lr_ratio=0.0, cosine_horizon_factor=1.0, b1=0.9, b2=0.95, eps=1e-8,
                                           weight_decay=0.0, clip_norm=1.0))
    sc = StepConfig(method="sft", chunk_size=chunk, vocab_chunk_size=8192)
    tx, schedule = make_optimizer(optim, 1000)
    out = {}
    for mode in ("none", "examples"):
        micro = examples // rows_per_micro if mode == "none" else 1
        source = StepSource([(pool, examples, False)], max_length=seq, micro_batches=micro, pad_id=0, seed=seed,
                            packing=mode, rows_per_micro=rows_per_micro)
        graphdef, state = init_train_state(init_model(mcfg, seed=0), tx, sc)
        fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, sc=sc),
                     donate_argnums=0)
        batches = [jax.device_put(source[i]) for i in range(steps)]
        for b in batches:  # compile every step shape
            state, m = fn(state, b)
        jax.block_until_ready(m)
        t = time.perf_counter()
        for b in batches:
            state, m = fn(state, b)
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t) / steps
        real = sum(float(np.sum(np.asarray(b["segment_ids"]) > 0)) for b in batches) / steps
        # computed tokens: rows of micro-batches that hold a counted token (all-padding ones are skipped)
        computed = sum(float(np.sum(np.any(np.asarray(b["loss_mask"]) > 0, axis=(1, 2)))) * rows_per_micro * seq
                       for b in batches) / steps
        out[mode] = (real / dt, 1 - real / computed, dt)
    return out


def bench_torch(mcfg, batch: int, seq: int, steps: int, threads: int) -> float:
    """Seconds per step of transformers Qwen2ForCausalLM + torch.optim.AdamW (eager), after a warm-up step."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(threads)
    cfg = Qwen2Config(vocab_size=mcfg.vocab_size, hidden_size=mcfg.hidden_size,
                      intermediate_size=mcfg.intermediate_size, num_hidden_layers=mcfg.num_layers,
                      num_attention_heads=mcfg.num_heads, num_key_value_heads=mcfg.num_kv_heads,
                      tie_word_embeddings=mcfg.tie_word_embeddings)
    model = Qwen2ForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    x = torch.randint(0, mcfg.vocab_size, (batch, seq))

    def step():
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="Qwen2.5-Math-1.5B shape at T=4096 in bfloat16 on one GPU")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--packing", action="store_true",
                   help="also: real tokens/s on long-tailed lengths, one example per row vs example packing")
    p.add_argument("--packing-seq", type=int, default=1024, help="row length of the --packing comparison")
    args = p.parse_args(argv)
    import jax.numpy as jnp

    from exploresft_jax.models.qwen2 import Qwen2Config, qwen2p5_math_1p5b
    from exploresft_jax.train.throughput import train_flops_per_token

    if args.gpu:
        mcfg = qwen2p5_math_1p5b(dtype="bfloat16", remat_policy="full")
        batch, seq, chunk, peak_dtype, peak_n = args.batch or 4, args.seq or 4096, 1024, jnp.bfloat16, 8192
    else:
        mcfg = Qwen2Config(vocab_size=8192, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                           num_kv_heads=2, head_dim=64, dtype="float32", remat_policy="none")
        batch, seq, chunk, peak_dtype, peak_n = args.batch or 4, args.seq or 256, 256, jnp.float32, 1024
    threads = os.cpu_count() or 1
    peak = matmul_peak(peak_dtype, peak_n)
    flops_tok = train_flops_per_token(mcfg, seq)
    tokens = batch * seq
    rows = []
    t_ours = bench_ours(mcfg, batch, seq, args.steps, chunk)
    rows.append(("exploresft_jax (jit, chunked head)", t_ours))
    if not args.gpu:  # the CPU recipe's setting for small models: the layer loop unrolled (model.scan_unroll)
        unrolled = mcfg.replace(scan_unroll=mcfg.num_layers)
        rows.append((f"exploresft_jax, layers unrolled (scan_unroll={mcfg.num_layers})",
                     bench_ours(unrolled, batch, seq, args.steps, chunk)))
    if not args.no_torch and not args.gpu:
        rows.append((f"transformers + PyTorch AdamW (eager, {threads} threads)", bench_torch(mcfg, batch, seq,
                                                                                            args.steps, threads)))
    print(f"\nmodel: {mcfg.num_params / 1e6:.1f}M params, {mcfg.num_layers} layers, hidden {mcfg.hidden_size}, "
          f"vocab {mcfg.vocab_size}; batch {batch} x {seq} tokens; {mcfg.dtype}; measured matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s ({jnp.dtype(peak_dtype).name}, {peak_n}^3)\n")
    print("| implementation | s/step | tokens/s | achieved GFLOP/s | MFU vs measured peak | speed vs PyTorch |")
    print("|---|---|---|---|---|---|")
    ref = next((t for name, t in rows if name.startswith("transformers")), None)
    for name, t in rows:
        achieved = flops_tok * tokens / t
        speed = f"{ref / t:.2f}x" if ref else "-"
        print(f"| {name} | {t:.3f} | {tokens / t:.0f} | {achieved / 1e9:.1f} | {achieved / peak:.1%} | {speed} |")
    if args.packing:
        res = bench_packing(mcfg, args.packing_seq, args.steps, chunk, examples=8, rows_per_micro=2)
        print(f"\nlong-tailed lengths (log-normal, median {0.18 * args.packing_seq:.0f}, "
              f"capped at {args.packing_seq}), "
              f"8 examples per step, 2 rows per micro-batch; tokens/s counts real (non-padding) tokens only\n")
        print("| batching | s/step | real tokens/s | padding computed | speed vs one example per row |")
        print("|---|---|---|---|---|")
        for mode, (tps, pad, dt) in res.items():
            print(f"| {mode} | {dt:.3f} | {tps:.0f} | {pad:.1%} | {tps / res['none'][0]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
