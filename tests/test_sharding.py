"""The logical-to-physical sharding rules and `explain`, the placement table README points to."""

from __future__ import annotations

import jax
from flax import nnx

from exploresft_jax import sharding as shd
from exploresft_jax.models.qwen2 import Qwen2Config, init_model

CFG = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, dtype="float32")


def test_explain_lists_every_parameter_with_its_shape_and_spec():
    mesh = shd.make_mesh((1, 4, 2))
    _, params = nnx.split(init_model(CFG, mesh=mesh, rules=shd.TRAIN_RULES))
    table = shd.explain(params, mesh, shd.TRAIN_RULES).splitlines()
    placed = shd.state_shardings(params, mesh, shd.TRAIN_RULES)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    specs = jax.tree.leaves(placed)
    assert len(table) == len(leaves) == len(specs)
    for line, (path, value), sharding in zip(table, leaves, specs):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path if getattr(k, "name", None) != "value"]
        assert line.split()[0] == "/".join(keys)
        assert str(tuple(value.shape)) in line
        assert line.rstrip().endswith(str(sharding.spec))
    # the embedding is sharded over fsdp on the model width: the table says so
    embed = next(line for line in table if "embed" in line.split()[0])
    assert "fsdp" in embed
