"""Tiny random transformers Qwen2 checkpoints for parity tests (weights re-randomised so parity is not trivial)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_hf_qwen2(folder: Path, *, vocab=96, hidden=32, inter=48, layers=2, heads=4, kv_heads=2, tie=True,
                  theta=10000.0, seed=0, torch_dtype="float32", max_shard_size=None):
    """Saves a random transformers Qwen2ForCausalLM in `folder` and returns the (float32, eval) torch model."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tie,
                      rope_theta=theta, rms_norm_eps=1e-6, max_position_embeddings=512)
    model = Qwen2ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    save = model if torch_dtype == "float32" else model.to(getattr(torch, torch_dtype))
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    save.save_pretrained(folder, **kwargs)
    return model.float()


def hf_logits(model, tokens: np.ndarray, attn_mask: np.ndarray | None = None,
              positions: np.ndarray | None = None) -> np.ndarray:
    import torch

    kw = {}
    if attn_mask is not None:
        kw["attention_mask"] = torch.tensor(attn_mask, dtype=torch.long)
    if positions is not None:
        kw["position_ids"] = torch.tensor(positions, dtype=torch.long)
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long), **kw).logits.float().numpy()
