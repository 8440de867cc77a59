"""Orbax checkpoints of the train state, the input pipeline position and the config.

Layout: workdir/checkpoints/<step>/{state, data, config}. Restoring takes the *current* shardings as the target,
so a run saved on one mesh resumes on another.

Damaged checkpoints. A disk or copy failure can leave the newest <step> directory in place with array files
missing, truncated or garbled. `Checkpointer.restore()` (no explicit step) then falls back to the next older
readable step, prints one line per skipped step to stderr and moves each skipped directory aside to
`<step>.unreadable` (kept for inspection, ignored by orbax, never garbage-collected: delete it by hand). Only storage
errors count as "unreadable"; a checkpoint that does not fit the target (different shapes or tree, i.e. a changed
config) raises as before, and nothing is moved unless an older step was actually restored.

Half-written saves. Orbax writes a step into `<step>.orbax-checkpoint-tmp-<n>` and renames it when complete, so an
interrupted save never shows up as a step; leftovers of such saves are removed when the manager starts.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding

import exploresft_jax.train.orbax_compat as orbax_compat

UNREADABLE_SUFFIX = ".unreadable"

# tensorstore reports storage failures as ValueError("<STATUS_CODE>: ..."). These codes mean the bytes on disk are
# missing or wrong; the transient / environment ones (PERMISSION_DENIED, UNAVAILABLE, RESOURCE_EXHAUSTED,
# DEADLINE_EXCEEDED, ABORTED, CANCELLED) are left to propagate: falling back would lose progress for nothing.
_DAMAGE_CODES = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "UNKNOWN",
                 "INTERNAL")
_STATUS_RE = re.compile(r"^([A-Z_]+): ")
_REASON_CHARS = 240  # keeps the fallback line one readable terminal line or two


class CheckpointError(ValueError):
    """No checkpoint could be restored; the message is one line naming every step tried and why it failed."""


class Restored(NamedTuple):
    """What `Checkpointer.restore` returns; unpacks as `state, data_state, config`."""
    state: Any
    data: dict
    config: dict


def is_damage(exc: BaseException) -> bool:
    """True when `exc` (raised while reading a checkpoint) means its files are missing, truncated or garbled, as
    opposed to a target that does not fit (shape / tree mismatch), a permission problem or a transient I/O error."""
    if isinstance(exc, PermissionError):
        return False
    if isinstance(exc, (OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError, EOFError)):
        # OSError: file gone / EIO; KeyError: orbax's 'Item "state" was not found in the checkpoint'.
        return True
    if isinstance(exc, ValueError):
        m = _STATUS_RE.match(str(exc))
        return bool(m) and m.group(1) in _DAMAGE_CODES
    return False


def short_reason(exc: BaseException, step_dir: Path | None = None) -> str:
    """One line, at most ~240 characters: the status code and the innermost clause of a tensorstore error (the
    file that failed and why), paths shown relative to `step_dir`."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc)
    text = text.split(" [tensorstore_spec")[0]  # drops the JSON spec tensorstore appends (kilobytes of it)
    m = _STATUS_RE.match(text)
    if m:
        # 'NOT_FOUND: Error opening "cast" driver: Error opening "zarr" driver: ...: Error reading <file>' ->
        # 'NOT_FOUND: Error reading <file>'
        clauses = text[m.end():].split(": Error ")
        text = f"{m.group(1)}: " + (clauses[0] if len(clauses) == 1 else "Error " + clauses[-1])
    else:
        text = f"{type(exc).__name__}: {text}"
    if step_dir is not None:
        text = text.replace(str(step_dir) + "/", "")
    text = " ".join(text.split())
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Checkpointer:
    """Saves / restores (state, data_state, config) per step under `directory`, keeping the newest `keep`.

    `every_steps`: save interval in optimizer steps (`should_save`). `async_save`: array writes continue in the
    background after `save` returns (`wait` / `close` block until they are on disk).
    """

    def __init__(self, directory: str | Path, *, every_steps: int, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        # cleanup_tmp_directories: leftovers of interrupted saves (<step>.orbax-checkpoint-tmp-*) are never read as
        # steps anyway, but each can hold a whole train state's worth of disk.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1,
                                               enable_async_checkpointing=async_save, create=True,
                                               cleanup_tmp_directories=True)
        self.every = max(1, every_steps)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.restored_step: int | None = None  # the step the last restore() read
        self.skipped_steps: list[int] = []  # unreadable steps that restore() fell back past (moved aside)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int, final: bool) -> bool:
        return final or step % self.every == 0

    def save(self, step: int, state, data_state: dict, config: dict) -> bool:
        """Starts saving `step`; False (with a line on stderr) when orbax declines, i.e. `step` is not newer than
        the latest step on disk."""
        saved = self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                data=ocp.args.JsonSave(data_state),
                                                                config=ocp.args.JsonSave(config)))
        if not saved and jax.process_index() == 0:
            _say(f"checkpoint step {step} not saved: {self.directory} already has step {self.latest_step()}")
        return bool(saved)

    def _restore_step(self, step: int, abstract) -> Restored:
        with orbax_compat.settled_event_loops():
            r = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                   data=ocp.args.JsonRestore(),
                                                                   config=ocp.args.JsonRestore()))
        return Restored(r.state, r.data, r.config)

    def restore(self, state_like, step: int | None = None) -> Restored:
        """(state, data_state, config) of `step`, placed like `state_like`'s arrays; sets `self.restored_step`.

        With `step=None`: the newest readable step. Each step whose files are damaged (see `is_damage`) is skipped
        with one line on stderr and moved aside to `<step>.unreadable` (by process 0), so it neither shadows nor
        blocks later saves; `self.skipped_steps` lists them. Raises CheckpointError when no step (or the explicit
        `step`) is readable, and then moves nothing; other errors (e.g. a target that does not match the saved
        tree, a permission error) propagate unchanged. On multi-host all processes must end on the same step.
        """

        def target(x):
            sharding = x.sharding
            if isinstance(sharding, NamedSharding):
                sharding = NamedSharding(sharding.mesh, sharding.spec)
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

        abstract = jax.tree.map(target, state_like)
        self.restored_step, self.skipped_steps = None, []
        candidates = sorted(self.manager.all_steps(), reverse=True) if step is None else [step]
        if not candidates:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        failures: list[tuple[int, str]] = []
        restored, result = None, None
        for s in candidates:
            try:
                result = self._restore_step(s, abstract)
            except Exception as e:
                if not is_damage(e):
                    raise
                failures.append((s, short_reason(e, self.directory / str(s))))
                continue
            restored = s
            break
        restored = self._agree_across_processes(restored)
        if restored is None:
            tried = "; ".join(f"{s}: {why}" for s, why in failures)
            raise CheckpointError(f"no readable checkpoint in {self.directory} (tried {tried})")
        self._set_aside([(s, why) for s, why in failures if s > restored], restored)
        self.restored_step = restored
        return result

    def _agree_across_processes(self, restored: int | None) -> int | None:
        """On multi-host, every process must resume from the same step (or all fail): a process-local read error
        must not let hosts continue from different states."""
        if jax.process_count() == 1:
            return restored
        from jax.experimental import multihost_utils

        steps = np.asarray(multihost_utils.process_allgather(np.int64(-1 if restored is None else restored)))
        if (steps == steps.flat[0]).all():
            return restored
        raise CheckpointError(f"processes restored different checkpoint steps from {self.directory}: "
                              f"{sorted(set(int(x) for x in steps.flat))} (-1: none readable)")

    def _set_aside(self, skipped: list[tuple[int, str]], restored: int) -> None:
        """Moves each skipped step to <step>.unreadable (process 0; one stderr line each), then refreshes the
        manager's step list: a stale unreadable step N would otherwise make orbax silently skip every save <= N."""
        if not skipped:
            return
        for s, why in skipped:
            self.skipped_steps.append(s)
            if jax.process_index() != 0:  # one filesystem, one mover, one log line
                continue
            src = self.directory / str(s)
            dst = self.directory / f"{s}{UNREADABLE_SUFFIX}"
            n = 1
            while dst.exists():  # the same step may be damaged again after a later save
                dst = self.directory / f"{s}{UNREADABLE_SUFFIX}.{n}"
                n += 1
            src.rename(dst)
            _say(f"checkpoint {src} is unreadable ({why}); moved to {dst.name}; falling back to {restored}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("exploresft_jax.checkpoint.set_aside")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        # The manager sweeps leftover tmp directories in a background thread started at construction and awaited
        # only by a save: a run that fails before its first save must still wait for it, or the thread meets the
        # interpreter's shutdown and prints a traceback after the run's one-line error.
        cleanup = getattr(self.manager, "_cleanup_tmp_directory_future", None)
        if cleanup is not None:
            cleanup.result()
            self.manager._cleanup_tmp_directory_future = None
        self.manager.wait_until_finished()
        self.manager.close()
