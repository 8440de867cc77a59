"""Shared command-line plumbing: one clear error line and a non-zero exit on bad input."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from exploresft_jax.train.guards import RunawayLossError


def setup_runtime() -> None:
    """Process-wide settings for scripts: quiet transformers and grain's absl flags parsed (see grain#1355)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Calls main(argv); bad input (ValueError, KeyError, FileNotFoundError) -> 'error: ...' on stderr, exit 2."""
    setup_runtime()
    try:
        return int(main(argv) or 0)
    except RunawayLossError as e:  # the run stopped itself; its newest checkpoint is the last good one
        print(f"error: {e}; the newest checkpoint is the last good one", file=sys.stderr)
        return 3
    except (ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
