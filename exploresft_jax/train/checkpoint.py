"""Orbax checkpoints of the train state, the input pipeline position and the config.

Layout: workdir/checkpoints/<step>/{state, data, config}. Restoring takes the *current* shardings as the target,
so a run saved on one mesh resumes on another.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding


class Checkpointer:
    def __init__(self, directory: str | Path, *, every_steps: int, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1,
                                               enable_async_checkpointing=async_save, create=True)
        self.every = max(1, every_steps)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int, final: bool) -> bool:
        return final or step % self.every == 0

    def save(self, step: int, state, data_state: dict, config: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state),
                                                        config=ocp.args.JsonSave(config)))

    def restore(self, state_like, step: int | None = None):
        """(state, data_state, config) of `step` (default latest), placed like `state_like`'s arrays."""
        step = self.latest_step() if step is None else step

        def target(x):
            sharding = x.sharding
            if isinstance(sharding, NamedSharding):
                sharding = NamedSharding(sharding.mesh, sharding.spec)
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

        abstract = jax.tree.map(target, state_like)
        r = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                               data=ocp.args.JsonRestore(),
                                                               config=ocp.args.JsonRestore()))
        return r.state, r.data, r.config

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
