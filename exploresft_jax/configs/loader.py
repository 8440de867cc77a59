"""Loading a run config the way every command line does: a `configs/*.py` file with `get_config()` plus
`--config.a.b=value` overrides (ml_collections `config_flags`), with one error line for a bad file or field."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ml_collections import ConfigDict


def load_from_argv(argv: Sequence[str], *, prog: str = "train.py") -> ConfigDict:
    """The config named by `argv` (`--config FILE` or `--config=FILE`, then `--config.<field>=<value>` overrides;
    no program name). Raises ValueError with one line: a missing --config, a file that does not load, a value
    that does not parse, or an override naming a field the config does not have."""
    from absl import flags
    from ml_collections import config_flags

    argv = [prog, *argv]
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
    except Exception as e:  # noqa: BLE001 - a config file that does not load: one line, not its traceback
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"--config: {type(e).__name__}: {first}") from None
    finally:
        sys.argv = saved_argv
    if fv.config is None:
        raise ValueError("--config FILE is required (e.g. configs/tiny_cpu.py)")
    return fv.config


def load_config(path: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """The config of the file `path` with `--config.a.b=value` overrides."""
    return load_from_argv([f"--config={path}", *overrides])
