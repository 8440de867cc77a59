"""End-to-end training runs on CPU: every method learns, resume is bit-exact, bad input fails clearly."""

from __future__ import annotations

import importlib.util
import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from exploresft_jax import cli
from exploresft_jax.models.hf import SafetensorsFolder
from exploresft_jax.train import loop
from exploresft_jax.train.logger import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(workdir: Path, method: str = "sft", **over):
    spec = importlib.util.spec_from_file_location("tiny_cpu", ROOT / "configs" / "tiny_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.method = method
    c.workdir = str(workdir)
    c.model.custom.update(dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                               head_dim=8))
    c.tokenizer.train_bpe_vocab = 300
    c.data.synthetic_size = 64
    c.data.max_length = 64
    c.batch.global_size = 8
    c.batch.ul_size = 8
    c.batch.micro_batches = 2
    c.optim.num_steps = 40
    c.optim.lr = 1e-2
    c.checkpoint.every_steps = 20
    c.checkpoint.async_save = False
    c.log.every_steps = 5
    c.log.plots = False
    c.checkpoint.export_hf = False
    for k, v in over.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


@pytest.mark.parametrize("method", ["sft", "oxa", "curio"])
def test_each_method_fits_the_tiny_task(method, tmp_path):
    loop.run(tiny_config(tmp_path, method, **({"log.plots": True} if method == "oxa" else {})))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    first, last = rows[0], rows[-1]
    assert last["step"] == 40 and first["step"] == 1
    # the CE / NLL term falls by at least 2x on the response tokens
    assert last["nll"] < 0.5 * first["nll"], (first["nll"], last["nll"])
    assert all(r["skipped"] == 0 for r in rows)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]
    if method == "oxa":
        assert 0 < last["ul"] and "ul_entropy" in last and "ce_entropy" in last
        assert (tmp_path / "curves.png").stat().st_size > 0
    if method == "curio":
        assert 1.1 <= last["tau"] <= 1.5 and last["sed"] >= 0


def test_stop_and_resume_is_bit_exact(tmp_path):
    over = {"optim.num_steps": 12, "checkpoint.every_steps": 100, "checkpoint.export_hf": True,
            "checkpoint.export_dtype": "float32"}
    loop.run(tiny_config(tmp_path / "straight", "oxa", **over))
    loop.run(tiny_config(tmp_path / "resumed", "oxa", **over, **{"optim.max_steps_per_run": 5}))
    assert not (tmp_path / "resumed" / "hf_export").exists()
    loop.run(tiny_config(tmp_path / "resumed", "oxa", **over))  # same command again: resumes at step 5
    a, b = SafetensorsFolder(tmp_path / "straight" / "hf_export"), SafetensorsFolder(tmp_path / "resumed" / "hf_export")
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["loss"] for r in straight if r["step"] == 12] == [r["loss"] for r in resumed if r["step"] == 12]


def _train_main():
    return runpy.run_path(str(ROOT / "scripts" / "train.py"))["main"]


def test_bad_record_fails_with_file_and_line(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1?", "response": "2"}\n{"prompt": "2+2?", "response": 4}\n')
    code = cli.run(_train_main(), ["--config", str(ROOT / "configs" / "tiny_cpu.py"), "--config.data.synthetic=",
                                   f"--config.data.train_files=('{data}',)", f"--config.workdir={tmp_path / 'w'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{data}:2" in err[0] and "'response'" in err[0]


def test_bad_record_in_a_fresh_process_prints_exactly_one_line(tmp_path):
    """As a user runs it: nothing may print after the error line (no background thread meeting the interpreter's
    shutdown), and the exit code is 2."""
    import os
    import subprocess
    import sys

    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1?", "response": "2"}\nnot json\n')
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(ROOT / "configs" /
                        "tiny_cpu.py"), "--config.data.synthetic=", f"--config.data.train_files=('{data}',)",
                        f"--config.workdir={tmp_path / 'w'}"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [f"error: {data}:2: invalid JSON (Expecting value "
                                                                    "at column 1)"], p.stderr[-2000:]


def test_unknown_override_field_fails_with_one_line(tmp_path, capsys):
    code = cli.run(_train_main(), ["--config", str(ROOT / "configs" / "tiny_cpu.py"), "--config.optim.nope=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: unknown config field 'nope' (overrides: --config.optim.nope)"]


@pytest.mark.parametrize("style", ["equals", "space"])
def test_invalid_values_fail_at_start(style, tmp_path, capsys):
    cfg_args = [f"--config={ROOT / 'configs' / 'tiny_cpu.py'}"] if style == "equals" else [
        "--config", str(ROOT / "configs" / "tiny_cpu.py")]
    code = cli.run(_train_main(), cfg_args + ["--config.optim.lr=-1", f"--config.workdir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: config.optim.lr=-1") and "\n" not in err
    code = cli.run(_train_main(), cfg_args + ["--config.method=bogus"])
    assert code == 2 and "config.method='bogus'" in capsys.readouterr().err


def mod_config(name):
    """configs/<name>.py's get_config(), as shipped."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _config_with_a_model_folder(name, tmp_path):
    """configs/<name>.py loaded, its model.path pointed at a stub folder with a config.json."""
    c = mod_config(name)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    c.model.path = str(model)
    return c


ACCELERATOR_CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("base", "tiny_cpu"))


def test_every_shipped_config_is_a_package_recipe():
    """configs/*.py and exploresft_jax.configs.NAMES list the same recipes, each file returning its recipe."""
    from exploresft_jax import configs

    assert sorted(p.stem for p in (ROOT / "configs").glob("*.py")) == sorted(configs.NAMES)


@pytest.mark.parametrize("name", ACCELERATOR_CONFIGS)
def test_accelerator_configs_validate(name, tmp_path):
    """The real-scale configs load and pass validation once their files exist."""
    from exploresft_jax.train.config import validate

    c = _config_with_a_model_folder(name, tmp_path)
    files = []
    for f in c.data.train_files:
        p = tmp_path / Path(f).name
        p.write_text("")
        files.append(str(p))
    c.data.train_files = tuple(files)
    prompt_files = []
    for f in c.grpo.prompt_files:
        p = tmp_path / Path(f).name
        p.write_text("")
        prompt_files.append(str(p))
    c.grpo.prompt_files = tuple(prompt_files)
    validate(c)
    if c.method == "grpo":
        from exploresft_jax.train.grpo_loop import validate_grpo

        validate_grpo(c)
        assert (c.grpo.prompts_per_step, c.grpo.group_size, c.grpo.temperature, c.optim.lr, c.grpo.kl_coef) == (
            64, 8, 0.85, 2e-6, 0.001)
    rows = c.batch.global_size + (c.batch.ul_size if c.method == "oxa" else 0)
    if c.method == "grpo":
        rows = c.grpo.prompts_per_step * c.grpo.group_size // c.grpo.mini_batches
    assert rows % c.batch.micro_batches == 0
    seven_b = "_7b_" in name
    if name.startswith("oxa") and name != "oxa_mle_tpu":
        lr = 5e-5 if seven_b else 1e-3 if name == "oxa_colab" else 2.5e-4  # the release's 7B / 1.5B learning rates
        assert (c.batch.global_size, c.batch.ul_size, c.loss.oxa.ul_weight, c.optim.lr) == (128, 128, 1e-4, lr)
    if name.startswith("curio"):
        assert (c.loss.curio.sync_every, c.loss.curio.alpha, c.optim.lr, c.batch.global_size) == (5, 0.99, 1e-5, 256)
    if seven_b:
        from exploresft_jax.train import fit

        assert fit.fallback_preset(mod_config(name)) == "qwen2p5_math_7b"
        length = c.grpo.max_new_tokens if c.method == "grpo" else c.data.max_length
        assert length == {"oxa": 16384, "curio": 9216, "grpo": 16384}[c.method]
        assert tuple(c.mesh.shape) == ((1, 8, 1) if name.endswith("_gpu") else (1, -1, 1))


def test_oxa_mle_config_is_oxa_without_ul_data(tmp_path):
    """configs/oxa_mle_tpu.py: OXA's settings with no UL rows and no UL term; it passes validation."""
    from exploresft_jax.train.config import validate
    from exploresft_jax.train.step import StepConfig

    c = _config_with_a_model_folder("oxa_mle_tpu", tmp_path)
    data = tmp_path / "oxa_mle.jsonl"
    data.write_text("")
    c.data.train_files = (str(data),)
    validate(c)
    assert (c.method, c.batch.global_size, c.batch.ul_size, c.loss.oxa.ul_weight, c.optim.lr) == (
        "oxa", 128, 0, 0.0, 2.5e-4)
    assert c.batch.global_size % c.batch.micro_batches == 0
    assert StepConfig.from_config(c).method == "oxa"
