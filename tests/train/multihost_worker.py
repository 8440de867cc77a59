"""Worker for the multi-process test, run from the repository root:
`python -m tests.train.multihost_worker PROCESS_ID NUM_PROCESSES PORT WORKDIR OUT`.

Each process simulates 2 CPU devices; process_id -1 runs alone (no jax.distributed) on 4 devices as the reference.
"""

import json
import os
import sys

pid, nproc, port, workdir, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 if pid < 0 else 2}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

from exploresft_jax import cli  # noqa: E402

cli.setup_runtime()
jax.config.update("jax_cpu_collectives_implementation", "gloo")

from exploresft_jax.train import loop  # noqa: E402
from tests.train.test_train_loop import tiny_config  # noqa: E402

cfg = tiny_config(workdir, "oxa")
cfg.optim.num_steps = 3
cfg.log.every_steps = 1
cfg.log.tensorboard = False
cfg.checkpoint.every_steps = 100
if pid >= 0:
    cfg.distributed.enabled = True
    cfg.distributed.coordinator_address = f"localhost:{port}"
    cfg.distributed.num_processes = nproc
    cfg.distributed.process_id = pid
last = loop.run(cfg)
with open(out, "w") as f:
    json.dump({"process_index": jax.process_index(), "devices": jax.device_count(), "loss": last["loss"],
               "grad_norm": last["grad_norm"]}, f)
