#!/usr/bin/env python
"""Train with any method chosen by the config: sft | oxa | curio | entropy_reg | dft.

    python scripts/train.py --config configs/oxa_tpu.py [--config.optim.lr=1e-5 --config.workdir=runs/x ...]

Both `--config=FILE` and `--config FILE` work; any field can be overridden with --config.<path>=<value>.
Running the same command again resumes from the newest checkpoint in the workdir.
"""

from __future__ import annotations

import sys

from exploresft_jax import cli


def main(argv=None) -> int:
    from absl import flags
    from ml_collections import config_flags

    argv = list(sys.argv if argv is None else ["train.py", *argv])
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(__doc__)
        return 0
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "a configs/*.py file with get_config()", flag_values=fv,
                                    lock_config=True)
    saved_argv, sys.argv = sys.argv, argv  # config_flags reads override names from sys.argv
    try:
        fv(argv)
    except flags.Error as e:
        raise ValueError(str(e).splitlines()[0]) from None
    except (AttributeError, KeyError) as e:  # an override naming a field the config does not have
        names = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        field = str(e.args[0] if e.args else e).strip("\"'")
        raise ValueError(f"unknown config field {field!r} (overrides: {', '.join(names)})") from None
    finally:
        sys.argv = saved_argv
    if fv.config is None:
        raise ValueError("--config FILE is required (e.g. configs/tiny_cpu.py)")
    cfg = fv.config
    if cfg.get("method") == "grpo":
        from exploresft_jax.train import grpo_loop

        grpo_loop.run(cfg)
    else:
        from exploresft_jax.train import loop

        loop.run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
