"""Parking buffers in host memory while another phase needs the accelerator's (GRPO: the train state during
rollouts).

During sampling, the accelerator needs the sampler's weight copy and KV cache; the train state (float32 master
weights and two Adam moments: 12 bytes per parameter, 18.5 GB for a 1.5B model) and the frozen KL reference
are idle until the update. `to_host` moves a pytree of arrays to the `pinned_host` memory kind of the same
devices with the same sharding (each process keeps its own shards: works on multi-host slices), `to_device`
brings it back; the move is a bit-exact copy. The device buffers are freed when the caller drops its last
reference (XLA cannot donate across memory kinds), so call as `state = to_host(state)`.

`transfer_programs` gives the same moves as jitted identities with host / device output shardings: what
`scripts/fit.py` compiles for a target to prove the target accepts the placement (the TPU compiler lowers it to
a copy into memory space 5 and reports the bytes under host_output_size).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

HOST = "pinned_host"
DEVICE = "device"


def supported(devices) -> bool:
    """True when every device has a pinned host memory space (TPU, GPU and CPU backends of current JAX)."""
    try:
        return all(HOST in {m.kind for m in d.addressable_memories()} for d in devices)
    except (AttributeError, NotImplementedError, jax.errors.JaxRuntimeError):
        return False


def _shardings(tree, kind: str):
    return jax.tree.map(lambda x: x.sharding.with_memory_kind(kind), tree)


def to_host(tree):
    """`tree` (arrays, any sharding) copied to pinned host memory, each shard on its own device's host."""
    return jax.device_put(tree, _shardings(tree, HOST))


def to_device(tree):
    """`tree` (from `to_host`) copied back to device memory with the same sharding."""
    return jax.device_put(tree, _shardings(tree, DEVICE))


def on_host(tree) -> bool:
    """True when every array of `tree` lives in pinned host memory."""
    return all(x.sharding.memory_kind == HOST for x in jax.tree.leaves(tree))


def transfer_programs(tree) -> tuple[Callable, Callable]:
    """(offload, reload): jitted identities of `tree` (abstract or concrete, placed) whose outputs are its host
    and its device placement; `offload.lower(tree)` / `reload.lower(host_tree)` compile the two moves."""
    return (jax.jit(lambda t: t, out_shardings=_shardings(tree, HOST)),
            jax.jit(lambda t: t, out_shardings=_shardings(tree, DEVICE)))
