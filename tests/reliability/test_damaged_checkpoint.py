"""A damaged newest checkpoint (array files lost, as a failed disk or copy leaves them) costs only the steps since
the previous checkpoint: the rerun says so in one line, moves the damaged step aside and ends at the weights of
the uninterrupted run."""

from __future__ import annotations

from exploresft_jax.train import loop
from tests.reliability.common import assert_same_weights, tiny


def test_rerun_falls_back_to_the_previous_checkpoint_and_ends_bit_exact(tmp_path, capfd):
    loop.run(tiny(tmp_path / "straight", "oxa", **{"optim.num_steps": 12}))
    cut = tmp_path / "cut"
    loop.run(tiny(cut, "oxa", **{"optim.max_steps_per_run": 8, "optim.num_steps": 12}))  # saves 4 and 8
    arrays = [p for p in (cut / "checkpoints" / "8" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert arrays, "the checkpoint layout changed: no array files found"
    for p in arrays:
        p.unlink()
    capfd.readouterr()
    loop.run(tiny(cut, "oxa", **{"optim.num_steps": 12}))
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if "unreadable" in ln]
    assert len(lines) == 1 and "falling back to 4" in lines[0], err
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert (cut / "checkpoints" / "8.unreadable").is_dir()
    assert "resumed from" in err and "/4 (step 4 of 12)" in err
    assert_same_weights(tmp_path / "straight", cut)
