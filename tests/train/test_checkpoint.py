"""Checkpointer: fallback past damaged checkpoints, saving after a fallback, leftovers of interrupted saves."""

import asyncio
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint._src import asyncio_utils as orbax_asyncio

from exploresft_jax.train import orbax_compat
from exploresft_jax.train.checkpoint import Checkpointer, CheckpointError, is_damage, short_reason


def _state(step: int):
    mesh = Mesh(np.array(jax.devices()[:8]), ("x",))
    w = jax.device_put(jnp.arange(32, dtype=jnp.float32).reshape(8, 4) * 0.5 + step, NamedSharding(mesh, P("x")))
    return {"w": w, "b": jnp.full((3,), 0.25 * step, jnp.bfloat16), "step": jnp.asarray(step, jnp.int32)}


def _save_steps(directory, steps, make=_state, keep=10):
    ckpt = Checkpointer(directory, every_steps=1, keep=keep, async_save=True)
    for s in steps:
        ckpt.save(s, make(s), {"position": s}, {"run": "test", "step": s})
    ckpt.close()


def _assert_state_equal(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _array_files(step_dir):
    """The OCDBT data files (array bytes and b-tree nodes) of a step's state."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array files under {step_dir}"
    return files


def _damage(step_dir, how: str):
    for f in _array_files(step_dir):
        if how == "delete":
            f.unlink()
        elif how == "truncate":
            f.write_bytes(f.read_bytes()[:10])
        elif how == "garbage":
            f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))
        else:
            raise ValueError(how)


def _lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


@pytest.mark.parametrize("how", ["delete", "truncate", "garbage"])
def test_damaged_newest_falls_back_to_previous_exactly(tmp_path, capfd, how):
    d = tmp_path / "checkpoints"
    _save_steps(d, [1, 2, 3])
    _damage(d / "3", how)
    capfd.readouterr()

    ckpt = Checkpointer(d, every_steps=1, keep=10)
    assert ckpt.latest_step() == 3
    state, data_state, config = ckpt.restore(_state(0))  # the callers' unpacking keeps working
    err = capfd.readouterr().err

    assert ckpt.restored_step == 2 and ckpt.skipped_steps == [3]
    _assert_state_equal(state, _state(2))
    assert state["w"].sharding == _state(0)["w"].sharding
    assert data_state == {"position": 2} and config == {"run": "test", "step": 2}
    (line,) = _lines(err, "unreadable")
    assert line.startswith(f"checkpoint {d}/3 is unreadable (") and line.endswith("; falling back to 2")
    assert "moved to 3.unreadable" in line and len(line) < 600
    assert "Traceback" not in err and "Event loop is closed" not in err
    # the damaged step is out of the way: no longer listed, kept aside for inspection
    assert ckpt.latest_step() == 2 and sorted(ckpt.manager.all_steps()) == [1, 2]
    assert not (d / "3").exists() and (d / "3.unreadable").is_dir()
    ckpt.close()


def test_falls_back_past_several_damaged_steps(tmp_path, capfd):
    d = tmp_path / "checkpoints"
    _save_steps(d, [1, 2, 3, 4])
    _damage(d / "4", "delete")
    shutil.rmtree(d / "3" / "data")  # a whole item missing
    capfd.readouterr()

    ckpt = Checkpointer(d, every_steps=1, keep=10)
    restored = ckpt.restore(_state(0))
    err = capfd.readouterr().err
    _assert_state_equal(restored.state, _state(2))
    assert ckpt.restored_step == 2 and ckpt.skipped_steps == [4, 3]
    lines = _lines(err, "unreadable")
    assert len(lines) == 2
    assert lines[0].startswith(f"checkpoint {d}/4 is unreadable (NOT_FOUND")
    assert lines[1].startswith(f"checkpoint {d}/3 is unreadable (KeyError: Item \"data\" was not found")
    assert sorted(p.name for p in d.iterdir()) == ["1", "2", "3.unreadable", "4.unreadable"]
    ckpt.close()


def test_all_damaged_raises_one_line_checkpoint_error_and_moves_nothing(tmp_path, capfd):
    d = tmp_path / "checkpoints"
    _save_steps(d, [1, 2])
    _damage(d / "1", "garbage")
    _damage(d / "2", "truncate")
    ckpt = Checkpointer(d, every_steps=1, keep=10)
    with pytest.raises(CheckpointError) as info:
        ckpt.restore(_state(0))
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in msg and msg.startswith(f"no readable checkpoint in {d} (tried 2: OUT_OF_RANGE")
    assert "; 1: DATA_LOSS" in msg
    assert info.value.__cause__ is None and info.value.__context__ is None  # no kilobyte tensorstore chain
    assert ckpt.restored_step is None
    # nothing is moved when nothing could be restored: the failure may not be the checkpoints' fault
    assert sorted(p.name for p in d.iterdir()) == ["1", "2"]
    assert "Event loop is closed" not in capfd.readouterr().err
    ckpt.close()


def test_explicit_damaged_step_raises_without_fallback(tmp_path):
    d = tmp_path / "checkpoints"
    _save_steps(d, [1, 2])
    _damage(d / "2", "delete")
    ckpt = Checkpointer(d, every_steps=1, keep=10)
    with pytest.raises(CheckpointError, match=r"tried 2: NOT_FOUND"):
        ckpt.restore(_state(0), step=2)
    assert (d / "2").is_dir()
    _assert_state_equal(ckpt.restore(_state(0), step=1).state, _state(1))
    ckpt.close()


def test_target_mismatch_is_not_damage(tmp_path):
    """A changed config (other shapes) must raise as before, not skip or move the (intact) checkpoints."""
    d = tmp_path / "checkpoints"
    _save_steps(d, [1, 2])
    ckpt = Checkpointer(d, every_steps=1, keep=10)
    wrong = dict(_state(0), b=jnp.zeros((5,), jnp.bfloat16))
    with pytest.raises(ValueError, match="not compatible with the stored shape") as info:
        ckpt.restore(wrong)
    assert not isinstance(info.value, CheckpointError)
    assert sorted(p.name for p in d.iterdir()) == ["1", "2"]
    ckpt.close()


def test_saving_after_fallback_reuses_the_damaged_step_number(tmp_path):
    d = tmp_path / "checkpoints"
    _save_steps(d, [1, 2, 3])
    _damage(d / "3", "delete")
    new = lambda s: jax.tree.map(lambda x: x + 100, _state(s))  # noqa: E731

    ckpt = Checkpointer(d, every_steps=1, keep=10)
    state, _, _ = ckpt.restore(_state(0))
    assert ckpt.restored_step == 2
    # without moving 3 aside, orbax would silently skip both saves (3 <= latest step 3)
    assert ckpt.save(3, new(3), {"position": 3}, {}) is True
    assert ckpt.save(4, new(4), {"position": 4}, {}) is True
    ckpt.close()

    ckpt = Checkpointer(d, every_steps=1, keep=10)
    assert sorted(ckpt.manager.all_steps()) == [1, 2, 3, 4]
    latest, data_state, _ = ckpt.restore(_state(0))
    assert ckpt.restored_step == 4 and data_state == {"position": 4}
    _assert_state_equal(latest, new(4))
    _assert_state_equal(ckpt.restore(_state(0), step=3).state, new(3))
    assert (d / "3.unreadable").is_dir()

    # the same step damaged again: a second aside name, nothing overwritten
    ckpt.close()
    _damage(d / "4", "garbage")
    _damage(d / "3", "garbage")
    ckpt = Checkpointer(d, every_steps=1, keep=10)
    _assert_state_equal(ckpt.restore(_state(0)).state, _state(2))
    assert sorted(p.name for p in d.iterdir()) == ["1", "2", "3.unreadable", "3.unreadable.1", "4.unreadable"]
    ckpt.close()


def test_save_declined_for_an_old_step_is_reported(tmp_path, capfd):
    d = tmp_path / "checkpoints"
    _save_steps(d, [1, 2])
    ckpt = Checkpointer(d, every_steps=1, keep=10)
    capfd.readouterr()
    assert ckpt.save(2, _state(5), {}, {}) is False
    assert f"checkpoint step 2 not saved: {d} already has step 2" in capfd.readouterr().err
    ckpt.close()
    _assert_state_equal(Checkpointer(d, every_steps=1, keep=10).restore(_state(0)).state, _state(2))


def test_leftover_of_an_interrupted_save_is_ignored_and_cleaned(tmp_path):
    d = tmp_path / "checkpoints"
    _save_steps(d, [1, 2])
    # what a crash during the save of step 3 leaves: the tmp directory, partly written, never renamed
    leftover = d / "3.orbax-checkpoint-tmp-1700000000000000"
    shutil.copytree(d / "2", leftover)
    for f in _array_files(leftover)[:1]:
        f.unlink()

    ckpt = Checkpointer(d, every_steps=1, keep=10)
    assert ckpt.latest_step() == 2
    state, data_state, _ = ckpt.restore(_state(0))
    assert ckpt.restored_step == 2 and ckpt.skipped_steps == []
    _assert_state_equal(state, _state(2))
    assert ckpt.save(3, _state(3), {"position": 3}, {}) is True
    ckpt.close()
    assert not leftover.exists()
    assert sorted(p.name for p in d.iterdir()) == ["1", "2", "3"]
    ckpt = Checkpointer(d, every_steps=1, keep=10)
    _assert_state_equal(ckpt.restore(_state(0)).state, _state(3))
    ckpt.close()


def test_no_stray_event_loop_tracebacks(tmp_path, monkeypatch):
    """Many arrays: when one read fails, the others are still in flight (the case that printed one
    'RuntimeError: Event loop is closed' traceback per array through sys.unraisablehook)."""
    def many(s):
        return {f"a{i:03d}": jnp.full((16, 16), float(i + s)) for i in range(96)}

    d = tmp_path / "checkpoints"
    _save_steps(d, [1, 2], make=many)
    _damage(d / "2", "delete")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(repr(u.exc_value)))

    ckpt = Checkpointer(d, every_steps=1, keep=10)
    _assert_state_equal(ckpt.restore(many(0)).state, many(1))
    ckpt.close()
    time.sleep(0.5)  # late completions would report now
    gc.collect()
    assert unraisable == []


def test_failed_read_lets_sibling_reads_finish_before_closing_the_loop():
    """The mechanism behind the stray tracebacks, made deterministic: a failing read next to one whose completion
    arrives later from another thread (as tensorstore's do). orbax's loop is closed under the late one; ours waits."""
    threads, errors = [], []

    def complete_later(loop, fut):
        time.sleep(0.2)
        try:
            loop.call_soon_threadsafe(fut.set_result, 1)
        except RuntimeError as e:
            errors.append(str(e))

    async def read_ok():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        threads.append(threading.Thread(target=complete_later, args=(loop, fut)))
        threads[-1].start()
        return await fut

    async def read_bad():
        raise ValueError("NOT_FOUND: gone")

    async def restore():
        await asyncio.gather(read_ok(), read_bad())

    assert orbax_compat._orbax_run_sync_via_new_loop is not None, "orbax moved _run_sync_via_new_loop: re-check the fix"
    for run_sync, expected in ((orbax_compat._orbax_run_sync_via_new_loop, ["Event loop is closed"]),
                               (orbax_compat._run_sync_via_settling_loop, [])):
        errors.clear()
        with pytest.raises(ValueError, match="NOT_FOUND"):
            run_sync(restore())
        for t in threads:
            t.join()
        assert errors == expected
    assert orbax_compat._run_sync_via_settling_loop(asyncio.sleep(0, result=7)) == 7
    # the replacement is only in place while a Checkpointer restores
    with orbax_compat.settled_event_loops():
        assert orbax_asyncio._run_sync_via_new_loop is orbax_compat._run_sync_via_settling_loop
    assert orbax_asyncio._run_sync_via_new_loop is orbax_compat._orbax_run_sync_via_new_loop


def test_is_damage_and_short_reason():
    step_dir = Path("/ck/7")
    ts = ValueError('NOT_FOUND: Error opening "cast" driver: Error opening "zarr" driver: Error reading "b/.zarray" '
                    'in OCDBT database at local file "/ck/7/state/": Error reading Byte range [0, 279) of local file '
                    '"/ck/7/state/d/f0c2" [tensorstore_spec[1]=\'{"base": {"driver": "zarr"}}\']')
    assert is_damage(ts)
    assert short_reason(ts, step_dir) == \
        'NOT_FOUND: Error reading Byte range [0, 279) of local file "state/d/f0c2"'
    assert is_damage(FileNotFoundError("x")) and is_damage(KeyError("Item \"data\" was not found"))
    assert is_damage(json.JSONDecodeError("Expecting value", "", 0))
    assert not is_damage(PermissionError("denied"))
    assert not is_damage(ValueError("PERMISSION_DENIED: Error opening file"))
    assert not is_damage(ValueError("UNAVAILABLE: try again"))
    assert not is_damage(ValueError("Requested shape: (3, 3) is not compatible with the stored shape: (2, 3)."))
    assert not is_damage(TypeError("bug"))
    long = short_reason(ValueError("DATA_LOSS: " + "x" * 1000))
    assert len(long) == 240 and long.endswith("...") and "\n" not in short_reason(OSError("a\nb"))


def test_empty_directory_raises_checkpoint_error(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints", every_steps=1, keep=2)
    assert ckpt.latest_step() is None
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        ckpt.restore(_state(0))
    ckpt.close()
    assert os.path.isdir(tmp_path / "checkpoints")


_TWO_PROCESS_WORKER = r'''
import json, os, sys
pid, port, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
from pathlib import Path
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from exploresft_jax.train.checkpoint import Checkpointer

mesh = Mesh(np.array(jax.devices()), ("x",))


def state(s):
    full = np.arange(32, dtype=np.float32).reshape(8, 4) + s
    w = jax.make_array_from_callback(full.shape, NamedSharding(mesh, P("x")), lambda idx: full[idx])
    step = jax.make_array_from_callback((), NamedSharding(mesh, P()), lambda idx: np.int32(s))
    return {"w": w, "step": step}


def shards(st):
    return [np.asarray(x.data).tolist() for x in st["w"].addressable_shards] + [int(st["step"])]


d = Path(d)
ck = Checkpointer(d, every_steps=1, keep=5)
for s in (1, 2):
    ck.save(s, state(s), {"position": s}, {})
ck.close()
multihost_utils.sync_global_devices("saved")
if pid == 0:
    for f in (d / "2" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.unlink()
multihost_utils.sync_global_devices("damaged")
ck = Checkpointer(d, every_steps=1, keep=5)
st, data, _ = ck.restore(state(0))
out = {"restored": ck.restored_step, "skipped": ck.skipped_steps, "data": data,
       "equal": shards(st) == shards(state(1)), "saved": ck.save(2, state(7), {"position": 2}, {})}
ck.close()
ck = Checkpointer(d, every_steps=1, keep=5)
st, data, _ = ck.restore(state(0))
ck.close()
out.update(restored2=ck.restored_step, equal2=shards(st) == shards(state(7)), data2=data,
           listing=sorted(p.name for p in d.iterdir()))
print("RESULT " + json.dumps(out), flush=True)
'''


def test_two_processes_fall_back_together(tmp_path):
    """jax.distributed on two CPU processes: both resume from the same older step, process 0 alone moves the
    damaged step aside and logs it, and the step number can be saved again."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    d = tmp_path / "checkpoints"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_WORKER, str(i), str(port), str(d)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    for i, log in enumerate(logs):
        (result,) = [line for line in log.splitlines() if line.startswith("RESULT ")]
        out = json.loads(result[len("RESULT "):])
        assert out == {"restored": 1, "skipped": [2], "data": {"position": 1}, "equal": True, "saved": True,
                       "restored2": 2, "equal2": True, "data2": {"position": 2},
                       "listing": ["1", "2", "2.unreadable"]}, (i, log[-3000:])
        assert len(_lines(log, "is unreadable")) == (1 if i == 0 else 0)
        assert "Event loop is closed" not in log
