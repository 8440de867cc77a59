"""LoRA runs end to end, from the shipped (trained) demo base model: OXA writes a PEFT adapter that HuggingFace
`peft` loads onto the base with the merged export's logits and resumes bit-exactly from an adapter-only
checkpoint; only the adapters move (CurioSFT's lagged teacher is a copy of them); GRPO with LoRA on a quantized
base raises the reward."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from exploresft_jax.data.jsonl import write_jsonl
from exploresft_jax.demo import base_model
from exploresft_jax.demo import pipeline as demo
from exploresft_jax.demo.tasks import problem_sets
from exploresft_jax.models import hf
from exploresft_jax.train import grpo_loop, loop
from exploresft_jax.train.logger import read_metrics
from exploresft_jax.train.optim import make_optimizer
from exploresft_jax.train.runtime import lora_spec
from exploresft_jax.train.step import StepConfig, init_train_state, make_train_step
from tests.train.test_train_loop import tiny_config

BASE = base_model.SHIPPED


def _lora_config(workdir: Path, method: str, **over):
    return tiny_config(workdir, method, **{
        "model.init": "hf", "model.path": str(BASE), "tokenizer.train_bpe_vocab": 0, "model.lora.rank": 4,
        "model.lora.alpha": 8.0, "model.lora.base_dtype": "float32", "optim.num_steps": 10, "optim.lr": 1e-2,
        "checkpoint.export_hf": True, "checkpoint.export_dtype": "float32", "checkpoint.every_steps": 100, **over})


def _tensors(path: Path) -> dict[str, np.ndarray]:
    folder = hf.SafetensorsFolder(path)
    return {k: np.asarray(folder[k]) for k in folder.keys()}


def test_oxa_lora_writes_a_peft_adapter_with_the_merged_logits_and_resumes_exactly(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loop.run(_lora_config(tmp_path / "straight", "oxa"))
    loop.run(_lora_config(tmp_path / "resumed", "oxa", **{"optim.max_steps_per_run": 5}))
    ckpt = tmp_path / "resumed" / "checkpoints" / "5"
    saved = (ckpt / "state" / "_METADATA").read_text()
    assert "q_lora_a" in saved and "embed" not in saved and "q_kernel" not in saved  # adapters only
    assert json.loads((ckpt / "config" / "metadata").read_text())["model"]["path"] == str(BASE)
    loop.run(_lora_config(tmp_path / "resumed", "oxa"))  # the same command again: resumes at step 5
    a = _tensors(tmp_path / "straight" / "hf_adapter")
    b = _tensors(tmp_path / "resumed" / "hf_adapter")
    assert sorted(a) == sorted(b) and len(a) == 4 * 7 * 2  # 4 layers x 7 targets x (A, B)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    run = tmp_path / "straight"
    conf = json.loads((run / "hf_adapter" / "adapter_config.json").read_text())
    assert conf["r"] == 4 and conf["lora_alpha"] == 8.0 and conf["base_model_name_or_path"] == str(BASE)
    ids = torch.tensor([[3, 17, 42, 5, 99, 23, 64, 8, 11, 2]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, run / "hf_adapter")
        peft_logits = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run / "hf_export", dtype=torch.float32)(ids).logits
    np.testing.assert_allclose(peft_logits.numpy(), merged.numpy(), atol=1e-4)
    assert (peft_logits - base_logits).abs().max() > 1e-2  # the adapters learned something
    # our own loaders take the adapter folder as a model (base + adapter): scoring, sampling, evaluate.py --model
    ours = {}
    for name in ("hf_adapter", "hf_export"):
        model, _, _ = hf.load_for_inference(run / name, dtype="float32")
        assert (model.config.lora_spec is not None) == (name == "hf_adapter")
        ours[name] = np.asarray(_logits(*nnx.split(model), jnp.asarray(ids.numpy())))
    np.testing.assert_allclose(ours["hf_adapter"], ours["hf_export"], atol=1e-4)
    np.testing.assert_allclose(ours["hf_adapter"], peft_logits.numpy(), atol=1e-4)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, ids):
    model = nnx.merge(graphdef, state)
    return model.logits(model(ids, jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)))


def test_only_adapters_move_and_curios_teacher_is_a_lagged_copy_of_them(tmp_path):
    cfg = _lora_config(tmp_path, "curio", **{"loss.curio.sync_every": 2, "model.lora.targets": ("q", "v", "up"),
                                             "optim.warmup_steps": 0, "optim.warmup_ratio": 0.0})  # step 1: B, 2: A
    model = hf.load_hf_model(BASE, dtype="float32", lora=lora_spec(cfg))
    sc = StepConfig.from_config(cfg)
    tx, schedule = make_optimizer(cfg.optim, 10)
    graphdef, state = init_train_state(model, tx, sc)
    names = {p[-2].key for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    assert names == {"q_lora_a", "q_lora_b", "v_lora_a", "v_lora_b", "up_lora_a", "up_lora_b"}
    assert jax.tree.structure(state.teacher) == jax.tree.structure(state.params)
    frozen0 = jax.tree.map(np.asarray, state.frozen)
    params0 = jax.tree.map(np.asarray, state.params)
    sh = jax.tree.map(lambda x: x.sharding, state)
    rng = np.random.default_rng(0)
    t = 16
    batch = {"tokens": rng.integers(1, 200, (1, 4, t)), "labels": rng.integers(1, 200, (1, 4, t)),
             "loss_mask": np.ones((1, 4, t)), "positions": np.broadcast_to(np.arange(t), (1, 4, t)),
             "segment_ids": np.ones((1, 4, t)), "is_negative": np.zeros((1, 4)), "weight": np.ones((1, 4))}
    batch = {k: jax.numpy.asarray(v, np.float32 if k in ("loss_mask", "weight") else np.int32)
             for k, v in batch.items()}
    replicated = jax.sharding.NamedSharding(jax.tree.leaves(sh.params)[0].mesh, jax.sharding.PartitionSpec())
    step = make_train_step(graphdef, tx, schedule, sc, sh, {k: replicated for k in batch}, replicated)
    state, _ = step(state, batch)
    params1 = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch)
    assert int(metrics["skipped"]) == 0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.frozen), frozen0)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params, params0)
    assert all(m > 0 for m in jax.tree.leaves(moved)), moved
    # step 2 synced the teacher before its forward pass: (1 - alpha) * initial adapters + alpha * step 1's
    alpha = sc.options.alpha
    want = jax.tree.map(lambda p0, p1: (1 - alpha) * p0 + alpha * p1, params0, params1)
    jax.tree.map(lambda t, w: np.testing.assert_allclose(np.asarray(t), w, rtol=1e-6, atol=1e-7), state.teacher,
                 want)


def test_grpo_with_lora_on_a_quantized_base_raises_the_reward(tmp_path):
    s = demo.DemoSettings.quick()
    rl = tmp_path / "rl.jsonl"
    write_jsonl(rl, [{"prompt": p["prompt"], "answer": p["answer"]} for p in problem_sets(False, s)["rl"]])
    c = demo._base_run_config(s, tmp_path / "run", 0)
    c.method = "grpo"
    c.model.init, c.model.path = "hf", str(BASE)
    c.model.lora.rank, c.model.lora.alpha, c.model.lora.base_dtype = 8, 16.0, "nf4"
    c.grpo.prompt_files = (str(rl),)
    c.grpo.sft_warmup_steps = 0
    c.grpo.prompts_per_step, c.grpo.group_size, c.grpo.sampler_rows = 8, 8, 64
    c.grpo.max_new_tokens, c.grpo.temperature = s.max_new_tokens, 1.0
    c.grpo.max_prompt_length = s.max_length - s.max_new_tokens
    c.grpo.kl_coef = 0.01  # the reference is the base with the adapters off
    c.grpo.lr = 3e-3
    c.optim.num_steps, c.optim.schedule, c.optim.warmup_steps = 12, "constant", 1
    c.log.every_steps = 1
    grpo_loop.run(c)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert max(r["logprob_gap"] for r in rows) < 1e-3  # the sampler and the trainer see the same adapted model
    first, last = np.mean([r["reward_mean"] for r in rows[:3]]), np.mean([r["reward_mean"] for r in rows[-3:]])
    assert last > first + 0.08, (first, last)
    assert (tmp_path / "run" / "hf_adapter" / "adapter_model.safetensors").exists()
