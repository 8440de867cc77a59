"""notebooks/quickstart.ipynb runs top to bottom on CPU against a tiny local model, and its programs at its own
sizes (Qwen2.5-Math-1.5B) fit the chips it targets, proven by the TPU compiler.

The code cells are executed in order in one namespace (what a kernel does), with the parameters cell's values
replaced by small CPU ones right after it runs, so no notebook runner is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

from exploresft_jax.data import word_problems as wp
from exploresft_jax.models import hf
from exploresft_jax.models.qwen2 import Qwen2Config, init_model, qwen2p5_math_1p5b
from exploresft_jax.models.tokenizer import train_bpe_tokenizer
from exploresft_jax.train import fit

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def code_cells(path: Path) -> list[tuple[str, list[str]]]:
    nb = json.loads(path.read_text())
    return [("".join(c["source"]), c.get("metadata", {}).get("tags", [])) for c in nb["cells"]
            if c["cell_type"] == "code"]


def run_notebook(path: Path, params: dict) -> dict:
    ns: dict = {"__name__": "__main__"}
    cells = code_cells(path)
    assert sum("parameters" in tags for _, tags in cells) == 1, "exactly one cell tagged 'parameters'"
    for i, (src, tags) in enumerate(cells):
        assert "!pip" not in src and "%" not in src.split("\n")[0], f"cell {i}: shell magics do not run in tests"
        exec(compile(src, f"{path.name}[code cell {i}]", "exec"), ns)
        if "parameters" in tags:
            unknown = set(params) - set(ns)
            assert not unknown, f"not parameters of the notebook: {unknown}"
            ns.update(params)
    return ns


def tiny_model(folder: Path) -> Path:
    corpus = [r["prompt"] + " " + r["response"] for r in wp.teacher_solutions(wp.problems(60, seed=1))]
    tok = train_bpe_tokenizer(corpus, vocab_size=320)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, dtype="float32")
    hf.export_hf(init_model(cfg, seed=0), folder, dtype="float32", tokenizer=tok)
    return folder


def test_quickstart_notebook_runs_on_cpu(tmp_path):
    model = tiny_model(tmp_path / "model")
    bench = tmp_path / "bench" / "math500" / "test.jsonl"
    bench.parent.mkdir(parents=True)
    bench.write_text("".join(json.dumps({"problem": p["prompt"], "answer": p["answer"]}) + "\n"
                             for p in wp.problems(6, seed=77)))
    work = tmp_path / "work"
    ns = run_notebook(NOTEBOOK, dict(
        MODEL_DIR=str(model), WORKDIR=str(work), INSTALL=False, REPO_DIR=str(ROOT), TPU=False, DTYPE="float32",
        NUM_PROBLEMS=6, SELF_SAMPLES=2, NUM_POSITIVES=4, NUM_NEGATIVES=4, TRAIN_STEPS=2, BATCH=4, MICRO_BATCHES=2,
        LR=1e-3, MAX_LENGTH=192, BENCHMARK_DIR=str(tmp_path / "bench"), EVAL_PROBLEMS=4, EVAL_SAMPLES=2,
        MAX_NEW_TOKENS=16, CONFIG="oxa_colab"))  # the one-chip (LoRA) path; 8 CPU devices would pick oxa_tpu
    oxa = [json.loads(line) for line in (work / "oxa.jsonl").read_text().splitlines()]
    assert {r["loss_type"] for r in oxa} == {"ce", "ul"}  # a random model's answers are all wrong: UL data
    assert 1 <= sum(r["loss_type"] == "ce" for r in oxa) <= 4  # the Gaussian bins may fall short
    metrics = [json.loads(line) for line in (work / "oxa_run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 and "ul" in metrics[-1]
    assert (work / "oxa_run" / "hf_export" / "config.json").is_file()
    assert (work / "oxa_run" / "hf_adapter" / "adapter_model.safetensors").is_file()  # LoRA: PEFT adapters
    assert set(ns["scores"]) == {"base", "oxa"}
    for r in ns["scores"].values():
        assert set(r["pass_at_k"]) == {1, 2} and all(0.0 <= v <= 1.0 for v in r["pass_at_k"].values())
        assert r["entropy"] > 0


def notebook_parameters() -> dict:
    """The values of the notebook's parameters cell, as a user gets them."""
    ns: dict = {}
    src = next(src for src, tags in code_cells(NOTEBOOK) if "parameters" in tags)
    exec(compile(src, f"{NOTEBOOK.name}[parameters]", "exec"), ns)
    return ns


def notebook_programs(topology: str, say=None) -> list[fit.ProgramFit]:
    """The notebook's programs for Qwen2.5-Math-1.5B at its parameters' sizes, compiled for `topology`: the training
    step of the config it picks for that many chips (oxa_colab's LoRA on one, oxa_tpu on several, with the
    notebook's overrides), scoring (rows of MAX_LENGTH tokens) and the sampler at its largest batch (NUM_PROBLEMS x
    SELF_SAMPLES rows in batches of SAMPLER_ROWS, prompts up to 512 tokens, MAX_NEW_TOKENS new ones: the
    evaluation's sampler is the same or smaller)."""
    p = notebook_parameters()
    target = fit.resolve_target(topology)
    chips = len(target.devices)
    name = "oxa_colab" if chips == 1 else "oxa_tpu"
    mesh = "(1,-1,2)" if chips % 2 == 0 and name == "oxa_tpu" else "(1,-1,1)"
    cfg = fit.load_config(str(ROOT / "configs" / f"{name}.py"), [
        f"--config.data.max_length={p['MAX_LENGTH']}", f"--config.batch.global_size={p['BATCH']}",
        f"--config.batch.ul_size={p['BATCH']}", f"--config.batch.micro_batches={p['MICRO_BATCHES']}",
        f"--config.model.dtype={p['DTYPE']}", f"--config.mesh.shape={mesh}"])
    results = fit.check_config(cfg, target, cfg_name=f"quickstart:{name}", preset="qwen2p5_math_1p5b", say=say)
    results += fit.check_inference(qwen2p5_math_1p5b(dtype=p["DTYPE"]), target, prompts=p["NUM_PROBLEMS"],
                                   samples=p["SELF_SAMPLES"], prompt_len=512, new_tokens=p["MAX_NEW_TOKENS"],
                                   max_rows=p["SAMPLER_ROWS"], score_len=p["MAX_LENGTH"], cfg_name="quickstart",
                                   say=say)
    return results


def test_quickstart_programs_fit_one_v5e_chip():
    """Colab's smallest TPU (v5e-1, 15.75 GiB): every program the notebook runs compiles with >= 10% of HBM free
    (v6e-1 and v5e-8: README's LoRA section, from the same function)."""
    results = notebook_programs("v5e-1")
    assert [r.program for r in results] == ["train_step", "score", "prefill", "insert", "decode"]
    for r in results:
        assert r.fits and r.chips == 1 and r.headroom_pct >= 10.0, (r.program, r.per_chip_gib, r.error)
