"""Device mesh and logical-to-physical sharding rules.

Mesh axes are always ('data', 'fsdp', 'tensor'). Parameters and activations carry *logical* axis names
(`vocab`, `embed`, `q_heads`, `kv_heads`, `head_dim`, `mlp`, `layers`, `norm`; `act_batch`, `act_seq`,
`act_embed`, `act_heads`, `act_mlp`), and a `ShardingRules` table maps each logical name to mesh axes. Two
tables ship: `TRAIN_RULES` (parameters FSDP-sharded, batch over data x fsdp, optional tensor parallelism) and
`sample_rules()` (parameters replicated or tensor-sharded, batch over every remaining device).

A mesh axis is dropped from a dimension that it does not divide (e.g. 2 KV heads on a tensor axis of 4), so
the same rules serve any mesh; `explain()` says what was dropped.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
log = logging.getLogger(__name__)

MeshAxes = str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated)."""

    rules: tuple[tuple[str, MeshAxes], ...]

    def lookup(self, name: str | None) -> MeshAxes:
        if name is None:
            return None
        for logical, physical in self.rules:
            if logical == name:
                return physical
        return None

    def replace(self, **updates: MeshAxes) -> ShardingRules:
        table = dict(self.rules)
        table.update(updates)
        return ShardingRules(tuple(table.items()))


TRAIN_RULES = ShardingRules((
    # parameters: FSDP over the model width, tensor parallelism over heads / MLP / vocabulary
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    # activations: batch over data x fsdp, heads / MLP over tensor
    ("act_batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
))


def sample_rules(tensor_parallel: bool = False) -> ShardingRules:
    """Rules for sampling and scoring: no FSDP gathers in the decode loop.

    tensor_parallel=False: parameters replicated, batch over all three mesh axes.
    tensor_parallel=True: parameters sharded over 'tensor' (heads, MLP, vocabulary), batch over data x fsdp.
    """
    if tensor_parallel:
        return TRAIN_RULES.replace(embed=None)
    return TRAIN_RULES.replace(embed=None, vocab=None, q_heads=None, kv_heads=None, mlp=None,
                               act_batch=("data", "fsdp", "tensor"), act_heads=None, act_mlp=None, act_vocab=None)


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """`shape` with its -1 entry (at most one) resolved for `num_devices` devices; ValueError naming the shape
    when the count does not fit."""
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape {tuple(shape)} must have 3 entries for {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one entry may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if known <= 0 or num_devices % known:
            raise ValueError(f"mesh shape {tuple(shape)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, found {num_devices}")
    return tuple(shape)


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[Any] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh with Auto axes; one -1 entry takes the remaining devices.

    Raises ValueError naming the shape when the device count does not fit.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(mesh_shape(shape, len(devices)))
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # non-TPU topologies / fake CPU devices: plain order is fine
        arr = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, enabled: bool | None = None) -> bool:
    """Calls `jax.distributed.initialize` for multi-host runs (TPU pods, multi-node GPU).

    enabled=None initialises when a coordinator is given or the environment names one (Cloud TPU VMs and
    SLURM are detected by jax itself when enabled=True). Returns whether initialisation happened.
    """
    if enabled is None:
        enabled = bool(coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"))
    if not enabled:
        return False
    kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                     process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)
    return True


def mesh_axes_size(mesh: Mesh, axes: MeshAxes) -> int:
    """Number of devices spanned by a mesh axis or a tuple of axes (1 for None)."""
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(logical_axes: Iterable[str | None], rules: ShardingRules, mesh: Mesh,
                    shape: Sequence[int] | None = None) -> P:
    """PartitionSpec for an array with the given logical axes.

    A mesh axis already used by an earlier dimension, or one whose size does not divide the dimension, is
    dropped (that dimension stays replicated over it).
    """
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        phys = rules.lookup(name)
        phys_t = () if phys is None else ((phys,) if isinstance(phys, str) else tuple(phys))
        keep = []
        for a in phys_t:
            if a in used or a not in mesh.shape or mesh.shape[a] == 1:
                continue
            size = mesh_axes_size(mesh, tuple(keep) + (a,))
            if shape is not None and shape[i] % size:
                continue
            keep.append(a)
        used.update(keep)
        spec.append(None if not keep else (keep[0] if len(keep) == 1 else tuple(keep)))
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def _is_variable(x) -> bool:
    from flax import nnx

    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: Mesh, rules: ShardingRules):
    """NamedShardings for an nnx State (abstract or concrete) from each Variable's `logical_axes` metadata.

    Variables without logical axes are replicated. The result has the state's tree structure.
    """

    def one(v):
        meta = v.get_metadata() if hasattr(v, "get_metadata") else {}
        axes = meta.get("logical_axes")
        value = v.get_value() if hasattr(v, "get_value") else v
        if axes is None:
            return v.replace(NamedSharding(mesh, P()))
        return v.replace(NamedSharding(mesh, logical_to_spec(axes, rules, mesh, value.shape)))

    return jax.tree.map(one, state, is_leaf=_is_variable)


def batch_sharding(mesh: Mesh, rules: ShardingRules, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] input: the batch axis over the rules' `act_batch` mesh axes."""
    return NamedSharding(mesh, logical_to_spec(("act_batch",) + (None,) * (ndim - 1), rules, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def explain(state, mesh: Mesh, rules: ShardingRules) -> str:
    """Human-readable table: parameter path, shape, logical axes, partition spec."""
    lines = []
    flat = jax.tree_util.tree_flatten_with_path(state_shardings(state, mesh, rules))[0]
    shapes = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, sh), (_, val) in zip(flat, shapes):
        parts = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        name = "/".join(parts[:-1] if len(parts) > 1 and parts[-1] == "value" else parts)  # nnx.Param's .value
        lines.append(f"{name:40s} {str(tuple(val.shape)):28s} {sh.spec}")
    return "\n".join(lines)


# --- Activation constraints -------------------------------------------------------------------------------------
_ACTIVE: contextvars.ContextVar[tuple[Mesh, ShardingRules] | None] = contextvars.ContextVar(
    "exploresft_sharding", default=None)


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: ShardingRules):
    """Within this context (around tracing), `constrain` pins activations to the rules' shardings."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_rules() -> tuple[Mesh, ShardingRules] | None:
    """The (mesh, rules) of the enclosing `use_rules`, or None."""
    return _ACTIVE.get()


def active_mesh() -> Mesh | None:
    active = _ACTIVE.get()
    return None if active is None else active[0]


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical axis names; a no-op outside `use_rules`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(logical_axes, rules, mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
