"""Two CPU processes joined by jax.distributed (2 fake devices each) train together and agree with one
4-device process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = ["-m", "tests.train.multihost_worker"]  # run from ROOT, so `tests` is importable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *WORKER, str(i), "2", str(port), str(tmp_path / "multi"),
                               str(tmp_path / f"out{i}.json")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT) for i in range(2)]
    ref = subprocess.run([sys.executable, *WORKER, "-1", "1", "0", str(tmp_path / "single"),
                          str(tmp_path / "ref.json")], capture_output=True, text=True, timeout=900, cwd=ROOT)
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    single = json.loads((tmp_path / "ref.json").read_text())
    assert [o["process_index"] for o in outs] == [0, 1] and all(o["devices"] == 4 for o in outs)
    assert outs[0]["loss"] == outs[1]["loss"]
    assert abs(outs[0]["loss"] - single["loss"]) <= 1e-5 * abs(single["loss"])
    assert abs(outs[0]["grad_norm"] - single["grad_norm"]) <= 1e-4 * abs(single["grad_norm"])
