"""Greedy decode speed of this project's `Sampler` against Tunix's sampler (`tunix.generate.sampler.Sampler`) on
the same weights, in one process, the two taking turns in every repeat.

Needs google-tunix next to this package; its pins match ours (jax / flax), so a separate venv holds both:

    python -m venv /tmp/tunix && /tmp/tunix/bin/pip install google-tunix && /tmp/tunix/bin/pip install --no-deps -e .
    ../shared/tools/quiet-bench -- /tmp/tunix/bin/python scripts/bench/tunix_sampler.py --json

The model is `scripts/bench/sampler.py`'s CPU-mode one (4 layers, hidden 512, 8 heads / 2 KV heads, vocabulary
32k, tied head, float32 weights and KV cache), copied into Tunix's Qwen2 (`tunix.models.qwen2.model`) weight for
weight. Prompts of `--prompt-len` random tokens; every row decodes `--new-tokens` tokens (the stop id is one the
random model does not emit first). Each sampler runs its greedy path with the work GRPO asks of it: ours returns
tokens, log-probs and entropies; Tunix is timed returning tokens only (its default and fastest call) and, with
`--tunix-logprobs`, log-probs too. Per batch size: tokens/s of each (median of `--repeats`, every run listed), the
ratio, and the share of generated tokens on which the two agree (float reassociation may flip a near-tie).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the CPU-mode model, its shape arguments and the interleaved timer
from sampler import _random_model, _timed, add_model_args  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    add_model_args(p)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--engine", default="continuous", choices=("continuous", "static"))
    p.add_argument("--tunix-logprobs", action="store_true", help="also time Tunix returning log-probs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


class IdTokenizer:
    """Text <-> ids as space-separated integers (what Tunix's sampler needs to be handed token ids)."""

    def __init__(self, eos: int):
        self._eos = eos

    def encode(self, text: str, **_) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids, **_) -> str:
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self) -> int:
        return 0  # falsy: Tunix then prepends no BOS

    def eos_id(self) -> int:
        return self._eos

    def pad_id(self) -> int:
        return 0


def tunix_model(model, cfg):
    """Tunix's Qwen2 holding `model`'s weights (float32, tied head)."""
    import jax.numpy as jnp
    from flax import nnx
    from tunix.models.qwen2 import model as tq

    tcfg = tq.ModelConfig(num_layers=cfg.num_layers, vocab_size=cfg.vocab_size, embed_dim=cfg.hidden_size,
                          hidden_dim=cfg.intermediate_size, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                          num_kv_heads=cfg.num_kv_heads, rope_theta=int(cfg.rope_theta), norm_eps=cfg.rms_norm_eps,
                          use_tied_embedding=True, dtype=jnp.float32, param_dtype=jnp.float32)
    tm = tq.Qwen2(tcfg, rngs=nnx.Rngs(0))
    w = model.layers.stacked()
    tm.embedder.input_embedding.value = model.embed[...]
    tm.final_norm.w.value = model.final_norm[...]
    for i, layer in enumerate(tm.layers):
        layer.input_layernorm.w.value = w["input_norm"][i]
        layer.post_attention_layernorm.w.value = w["post_attn_norm"][i]
        for t in "qkv":
            getattr(layer.attn, f"{t}_proj").w.value = w[f"{t}_kernel"][i]
            if f"{t}_bias" in w:
                getattr(layer.attn, f"{t}_bias").value = w[f"{t}_bias"][i].reshape(-1)
        layer.attn.o_proj.w.value = w["o_kernel"][i]
        for t in ("gate", "up", "down"):
            getattr(layer.mlp, f"{t}_proj").kernel.value = w[f"{t}_kernel"][i]
    return tm, tcfg


def run(args) -> dict:
    import jax
    import numpy as np
    from tunix.generate import sampler as ts

    from exploresft_jax import sharding as shd
    from exploresft_jax.sampling import Greedy, Sampler

    model, cfg = _random_model(args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab,
                               0.02)
    tm, _ = tunix_model(model, cfg)
    batches = [int(b) for b in args.batches.split(",")]
    plen, new = args.prompt_len, args.new_tokens
    eos = cfg.vocab_size - 1
    mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    tok = IdTokenizer(eos)
    tunix = ts.Sampler(tm, tok, ts.CacheConfig(cache_size=plen + new, num_layers=cfg.num_layers,
                                               num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim))
    rng = np.random.default_rng(1)
    out = {"model": f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
                    f"{cfg.num_params / 1e6:.1f} M params float32", "engine": args.engine, "prompt_len": plen,
           "new_tokens": new, "repeats": args.repeats, "batches": {}}
    for b in batches:
        prompts = [list(rng.integers(1, cfg.vocab_size - 1, plen)) for _ in range(b)]
        texts = [tok.decode(p) for p in prompts]
        ours = Sampler(model, mesh=mesh, cache_dtype="float32", max_rows=b, min_prompt_bucket=plen,
                       engine=args.engine)
        gen = functools.partial(ours.generate, prompts, max_new_tokens=new, config=Greedy(), stop_ids=[eos])
        call = functools.partial(tunix, texts, max_generation_steps=new, max_prompt_length=plen, eos_tokens=[eos])
        fns = {"ours": gen, "tunix": call}
        if args.tunix_logprobs:
            fns["tunix_logprobs"] = functools.partial(call, return_logprobs=True)
        times = _timed(fns, args.repeats)
        ours_tokens = gen().tokens
        theirs = call().tokens
        agree = [np.mean(np.asarray(t)[:new] == o[:len(t)]) for t, o in zip(theirs, ours_tokens)]
        row = {"agreement": float(np.mean(agree))}
        for name, ts_ in times.items():
            row[f"{name}_tok_s"] = b * new / statistics.median(ts_)
            row[f"{name}_tok_s_runs"] = [b * new / t for t in ts_]
        for name in times:
            if name != "ours":
                row[f"ours_over_{name}"] = row["ours_tok_s"] / row[f"{name}_tok_s"]
        out["batches"][b] = row
    return out


def main(argv=None):
    args = parse_args(argv)
    res = run(args)
    if args.json:
        print(json.dumps(res))
        return
    print(f"{res['model']}; prompt {res['prompt_len']}, {res['new_tokens']} new tokens; ours: {res['engine']} "
          f"engine; median of {res['repeats']} interleaved runs")
    print("| batch | ours tok/s | Tunix tok/s | ours / Tunix | greedy tokens equal |")
    print("|---|---|---|---|---|")
    for b, r in res["batches"].items():
        print(f"| {b} | {r['ours_tok_s']:.0f} | {r['tunix_tok_s']:.0f} | {r['ours_over_tunix']:.2f}x | "
              f"{100 * r['agreement']:.0f}% |")


if __name__ == "__main__":
    main()
