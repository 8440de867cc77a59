"""Model FLOPs and token counts behind the logged tokens/s, padding fraction and MFU.

Only real (non-padding) tokens count: packing or bucketing changes the padding fraction, never the FLOPs
credited to the run.
"""

from __future__ import annotations

import jax
import numpy as np

from exploresft_jax.models import qwen2

# Dense bf16 peak FLOP/s per device, for the MFU estimate (matched against jax's device_kind).
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12, "H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops_per_device(override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one local device: the override (TFLOP/s) when > 0, else a known accelerator's, else None."""
    if override_tflops > 0:
        return override_tflops * 1e12
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def batch_token_stats(local: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """(real tokens, token positions computed, sum of squared segment lengths) of a host batch
    [micro, rows, T]: real tokens are non-padding (segment_ids > 0); computed positions count every row of the
    micro-batches the step does not skip (those holding a counted token)."""
    seg = local["segment_ids"]
    micro, rows, t = seg.shape
    busy = local["loss_mask"].reshape(micro, -1).any(1)
    ids = (np.arange(micro * rows)[:, None] * (t + 1) + seg.reshape(micro * rows, t)).ravel()
    lengths = np.bincount(ids[seg.ravel() > 0])
    return float(np.sum(seg > 0)), float(busy.sum() * rows * t), float(np.sum(lengths.astype(np.float64) ** 2))


def train_flops_per_token(mcfg: qwen2.Qwen2Config, seq_len: int, extra_forwards: int = 0) -> float:
    """6N for forward + backward of the weights, plus causal attention (about 6 * L * T * D), plus 2N per
    extra no-grad forward (CurioSFT's lagged teacher)."""
    n = mcfg.num_params
    attn = 6 * mcfg.num_layers * seq_len * mcfg.num_heads * mcfg.head_dim
    return 6 * n + attn + extra_forwards * (2 * n + attn / 3)
