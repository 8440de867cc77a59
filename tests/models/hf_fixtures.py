"""Tiny random transformers checkpoints (Qwen2, Qwen3, Llama) for parity tests (weights re-randomised so parity is
not trivial)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_hf_qwen2(folder: Path, *, vocab=96, hidden=32, inter=48, layers=2, heads=4, kv_heads=2, tie=True,
                  theta=10000.0, seed=0, torch_dtype="float32", max_shard_size=None):
    """Saves a random transformers Qwen2ForCausalLM in `folder` and returns the (float32, eval) torch model."""
    return make_hf_model(folder, "qwen2", vocab=vocab, hidden=hidden, inter=inter, layers=layers, heads=heads,
                         kv_heads=kv_heads, tie=tie, theta=theta, seed=seed, torch_dtype=torch_dtype,
                         max_shard_size=max_shard_size)


def make_hf_model(folder: Path, family: str, *, vocab=96, hidden=32, inter=48, layers=2, heads=4, kv_heads=2,
                  head_dim=None, tie=True, theta=10000.0, llama3_scaling=None, seed=0, torch_dtype="float32",
                  max_shard_size=None):
    """Saves a random transformers model of `family` (qwen2 | qwen3 | llama) in `folder`; returns the (float32,
    eval) torch model. llama3_scaling: (factor, low_freq_factor, high_freq_factor, original_max_positions) for
    Llama 3's RoPE scaling."""
    import torch
    import transformers

    kinds = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
             "llama": ("LlamaConfig", "LlamaForCausalLM")}
    config_cls, model_cls = (getattr(transformers, n) for n in kinds[family])
    torch.manual_seed(seed)
    rope = {"rope_type": "default", "rope_theta": theta}
    if llama3_scaling is not None:
        factor, low, high, original = llama3_scaling
        rope = {"rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": low,
                "high_freq_factor": high, "original_max_position_embeddings": original}
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tie,
              rope_parameters=rope, rms_norm_eps=1e-6, max_position_embeddings=512)
    if head_dim is not None:
        kw["head_dim"] = head_dim
    model = model_cls(config_cls(**kw)).eval()
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
