"""Running a config: the one entry point that picks a method's run from the method registry."""

from __future__ import annotations

from exploresft_jax.train import grpo_loop, loop
from exploresft_jax.train.objectives import OBJECTIVES


def run(cfg) -> dict:
    """Trains per `cfg` (resuming from its workdir's newest checkpoint): the run of an RL method (grpo_loop) or
    the SFT-family loop, as the method's entry in `objectives.OBJECTIVES` says (the SFT-family loop validates the
    config first, so an unknown method fails there with one line). Returns the last logged metrics."""
    objective = OBJECTIVES.get(cfg.method)
    if objective is not None and objective.rl:
        return grpo_loop.run(cfg)
    return loop.run(cfg)
