#!/usr/bin/env python
"""End-to-end demo that needs no download: build a tiny Qwen2 checkpoint, export it in HuggingFace format,
and score the perplexity of a few worked solutions with it (the first step of OXA data selection).

    python scripts/demo.py [--workdir runs/demo]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exploresft_jax import cli  # noqa: E402

SOLUTIONS = [
    ("What is 23 + 58?", "Left to right: 23 + 50 = 73, 73 + 8 = 81. So the answer is \\boxed{81}."),
    ("What is 23 + 58?", "Columns: 3 + 8 = 11, write 1 carry 1; 2 + 5 + 1 = 8. So the answer is \\boxed{81}."),
    ("What is 23 + 58?", "Round: 23 + 60 = 83, minus 2 is 81. So the answer is \\boxed{81}."),
    ("What is 47 + 36?", "Left to right: 47 + 30 = 77, 77 + 6 = 83. So the answer is \\boxed{83}."),
    ("What is 47 + 36?", "Columns: 7 + 6 = 13, write 3 carry 1; 4 + 3 + 1 = 8. So the answer is \\boxed{83}."),
    ("What is 47 + 36?", "Left to right: 47 + 30 = 77, 77 + 6 = 73. So the answer is \\boxed{73}."),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/demo")
    args = p.parse_args(argv)
    from exploresft_jax.models import hf
    from exploresft_jax.models.qwen2 import Qwen2Config, init_model
    from exploresft_jax.models.tokenizer import train_bpe_tokenizer

    work = Path(args.workdir)
    model_dir = work / "tiny_model"
    corpus = [f"{q} {a}" for q, a in SOLUTIONS] * 50
    tok = train_bpe_tokenizer(corpus, vocab_size=384)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, dtype="float32")
    hf.export_hf(init_model(cfg, seed=0), model_dir, dtype="float32", tokenizer=tok)
    print(f"wrote a {cfg.num_params / 1e3:.0f}k-parameter Qwen2 checkpoint to {model_dir}")

    data = work / "solutions.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in SOLUTIONS))
    out = work / "solutions.ppl.jsonl"
    score = cli_main("score_ppl")
    if score(["--model", str(model_dir), "--input", str(data), "--output", str(out)]) != 0:
        return 1
    print(f"\n{'ppl':>8}  {'tokens':>6}  response")
    for line in out.read_text().splitlines():
        r = json.loads(line)
        print(f"{r['ppl']:8.2f}  {r['num_tokens']:6d}  {r['response'][:70]}")
    return 0


def cli_main(name: str):
    import runpy

    return runpy.run_path(str(Path(__file__).resolve().parent / f"{name}.py"))["main"]


if __name__ == "__main__":
    sys.exit(cli.run(main))
