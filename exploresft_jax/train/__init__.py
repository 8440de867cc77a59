"""Training, from config to step.

  runtime.py     what every run shares: start-up, mesh, model, train state, checkpointer, progress, logging, export
  loop.py        the SFT-family run (sft | oxa | curio | entropy_reg | dft): data pools, the step loop
  grpo_loop.py   the GRPO run: collect rollouts, build update batches, train on them, log
  step.py        the pure, sharded train step over (graphdef, TrainState): accumulation, denominators, update
  objectives.py  one table from method to its options, its loss over the per-token statistics, its metrics
  launch.py      run(cfg): the run of the config's method (what scripts/train.py calls)
  optim.py, checkpoint.py, orbax_compat.py, logger.py, throughput.py, guards.py, preemption.py, config.py
  (validation across fields), fit.py (compile-only fit)
"""

