"""Training, from config to step.

  runtime.py     what every run shares: start-up, mesh, model, train state, checkpointer, progress, logging, export
  loop.py        the SFT-family run (sft | oxa | curio | entropy_reg | dft): data pools, the step loop
  grpo_loop.py   the GRPO run: collect rollouts, build update batches, train on them, log
  step.py        the pure, sharded train step over (graphdef, TrainState): accumulation, denominators, update
  objectives.py  one table from method to its options, its loss over the per-token statistics, its metrics
  optim.py, checkpoint.py, logger.py, throughput.py, config.py (validation), fit.py (compile-only fit)
"""
