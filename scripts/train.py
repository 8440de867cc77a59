#!/usr/bin/env python
"""Train with any method chosen by the config: sft | oxa | curio | entropy_reg | dft.

    python scripts/train.py --config configs/oxa_tpu.py [--config.optim.lr=1e-5 --config.workdir=runs/x ...]

Both `--config=FILE` and `--config FILE` work; any field can be overridden with --config.<path>=<value>.
Running the same command again resumes from the newest checkpoint in the workdir.
On a GPU, JAX may take 95% of the card (XLA_PYTHON_CLIENT_MEM_FRACTION, unless set): the GPU configs' fit
(scripts/fit.py) is judged against the card's marketed capacity, more than JAX's default 75%.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # read when a GPU backend starts; no-op elsewhere

from exploresft_jax import cli


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from exploresft_jax.configs.loader import load_from_argv
    from exploresft_jax.train.launch import run

    run(load_from_argv(argv))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
