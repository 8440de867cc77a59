"""Memory and step time of the LM-head loss: full logits vs the chunked head (`chunked_token_stats`).

For each sequence length, compiles `value_and_grad` of the mean token cross-entropy with respect to the
hidden states [1, T, D] and the head weight [V, D] (float32, batch 1) in two ways:

* naive: full [1, T, V] float32 logits, log-softmax, label gather (JAX autodiff);
* chunked: `exploresft_jax.losses.chunked_token_stats` (sequence chunks x vocabulary tiles, custom VJP).

Memory is XLA's compile-time `compiled.memory_analysis().temp_size_in_bytes` (no run needed).  With `--time`
it also runs each compiled function (one warm-up, then `--repeats` timed runs, alternating the two) and
reports the best step time of each and their ratio.  Prints a markdown table.

    python scripts/bench/loss_memory.py                        # memory at T = 4096 and 16384
    python scripts/bench/loss_memory.py --seq 4096 --time      # plus step time at T = 4096
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from exploresft_jax.losses import chunked_token_stats, token_logprobs

GIB = 1024**3


def naive_loss(hidden, weight, labels):
    logits = jnp.einsum("btd,vd->btv", hidden, weight, preferred_element_type=jnp.float32)
    return -jnp.mean(token_logprobs(logits, labels))


def make_chunked_loss(chunk: int, vtile: int):
    def loss(hidden, weight, labels):
        stats = chunked_token_stats(hidden, weight, labels, chunk_size=chunk, vocab_chunk_size=vtile)
        return -jnp.mean(stats["logprob"])
    return loss


def compile_grad(loss, seq: int, vocab: int, dim: int, dtype):
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    args = (jax.ShapeDtypeStruct((1, seq, dim), dtype), jax.ShapeDtypeStruct((vocab, dim), dtype),
            jax.ShapeDtypeStruct((1, seq), jnp.int32))
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def time_pair(first, second, args, repeats: int, warmup: bool = True) -> tuple[float, float]:
    """Best-of-``repeats`` wall time of two compiled functions, run alternately (after one warm-up each unless
    ``warmup`` is False; both are compiled ahead of time), so that load from other processes on a shared
    machine hits both alike."""
    if warmup:
        jax.block_until_ready(first(*args))
        jax.block_until_ready(second(*args))
    runs = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), runs):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            out.append(time.perf_counter() - t0)
    return min(runs[0]), min(runs[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--chunk", type=int, default=1024, help="sequence positions per chunk")
    ap.add_argument("--vocab-chunk", type=int, default=8192, help="vocabulary rows per tile")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--time", action="store_true", help="also run and time the compiled steps")
    ap.add_argument("--time-max-seq", type=int, default=4096, help="only time sequence lengths up to this")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed first run of each function")
    a = ap.parse_args()
    dtype = jnp.dtype(a.dtype)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, V={a.vocab}, D={a.dim}, batch 1, {a.dtype}, "
          f"chunk {a.chunk} x vocab tile {a.vocab_chunk}", flush=True)
    rows = []
    for seq in a.seq:
        naive, tn = compile_grad(naive_loss, seq, a.vocab, a.dim, dtype)
        chunked, tc = compile_grad(make_chunked_loss(a.chunk, a.vocab_chunk), seq, a.vocab, a.dim, dtype)
        mn = naive.memory_analysis().temp_size_in_bytes
        mc = chunked.memory_analysis().temp_size_in_bytes
        row = {"T": seq, "naive": mn / GIB, "chunked": mc / GIB, "mem_ratio": mc / mn, "compile": (tn, tc)}
        print(f"T={seq}: temp naive {mn / GIB:.3f} GiB, chunked {mc / GIB:.3f} GiB, ratio {mc / mn:.4f} "
              f"(compile {tn:.1f}s / {tc:.1f}s)", flush=True)
        if a.time and seq <= a.time_max_seq:
            rng = np.random.default_rng(0)
            args = (jnp.asarray(rng.normal(size=(1, seq, a.dim)), dtype),
                    jnp.asarray(0.02 * rng.normal(size=(a.vocab, a.dim)), dtype),
                    jnp.asarray(rng.integers(0, a.vocab, size=(1, seq)), jnp.int32))
            t_naive, t_chunk = time_pair(naive, chunked, args, a.repeats, not a.no_warmup)
            ln, gn = naive(*args)
            lc, gc = chunked(*args)
            err = max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(x)) + 1e-30)) for x, y in zip(gn, gc))
            row.update(t_naive=t_naive, t_chunk=t_chunk, loss_diff=abs(float(ln - lc)), grad_rel=err)
            print(f"  step naive {t_naive:.2f}s, chunked {t_chunk:.2f}s, ratio {t_chunk / t_naive:.3f}; "
                  f"|loss diff| {abs(float(ln - lc)):.2e}, max rel grad diff {err:.2e}", flush=True)
            del args
        rows.append(row)
    print()
    print("| T | naive temp (GiB) | chunked temp (GiB) | memory ratio | naive step (s) | chunked step (s) "
          "| time ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        tn = f"{r['t_naive']:.2f}" if "t_naive" in r else "-"
        tc = f"{r['t_chunk']:.2f}" if "t_chunk" in r else "-"
        tr = f"{r['t_chunk'] / r['t_naive']:.2f}" if "t_naive" in r else "-"
        print(f"| {r['T']} | {r['naive']:.3f} | {r['chunked']:.3f} | {r['mem_ratio']:.4f} | {tn} | {tc} | {tr} |")


if __name__ == "__main__":
    main()
