"""Every path on Qwen3 and Llama 3 checkpoints (the latter with Llama 3's RoPE scaling): perplexity scoring against
transformers, greedy generation against transformers' `generate`, an OXA fine-tune and GRPO from the checkpoint,
and the exports they write loading in transformers as the same family."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exploresft_jax.models.tokenizer import chat_prompt, stop_token_ids

from .hf_fixtures import hf_logits
from .tiny_folder import make_tiny_folder

FAMILIES = {
    "qwen3": dict(family="qwen3", heads=4, kv_heads=2, head_dim=16, theta=1e6),
    "llama": dict(family="llama", heads=4, kv_heads=2, theta=500000.0, llama3_scaling=(8.0, 1.0, 4.0, 32)),
}
RECORDS = [{"prompt": "What is 12 + 35?", "response": "10 + 30 = 40, 2 + 5 = 7, so \\boxed{47}."},
           {"prompt": "Compute 7 * 8.", "response": "Seven eights are fifty-six. The answer is \\boxed{56}."},
           {"prompt": "If x + 3 = 10, what is x?", "response": "x = 7"}]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def folder(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"tiny_{request.param}")
    tok, torch_model = make_tiny_folder(path, seed=3, **FAMILIES[request.param])
    return request.param, path, tok, torch_model


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_prompt_conditioned_ppl_matches_transformers(folder, tmp_path):
    from exploresft_jax.selection.perplexity import score_file

    _, path, tok, torch_model = folder
    data, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    score_file(str(path), str(data), str(out), condition_on_prompt=True)
    for r in (json.loads(line) for line in out.read_text().splitlines()):
        msgs = [{"role": "user", "content": r["prompt"]}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": r["response"]}], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
        ids = np.asarray(p_ids + r_ids)
        lp = _log_softmax(hf_logits(torch_model, ids[None]).astype(np.float64))[0]
        mean = lp[np.arange(len(p_ids) - 1, len(ids) - 1), ids[len(p_ids):]].mean()
        assert r["num_tokens"] == len(r_ids)
        assert abs(r["ppl"] - np.exp(-mean)) / np.exp(-mean) < 1e-3


def test_greedy_generation_matches_transformers(folder, tmp_path):
    import torch

    from exploresft_jax.sampling.files import generate_file

    _, path, tok, torch_model = folder
    data, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in RECORDS))
    generate_file(str(path), str(data), str(out), temperature=0.0, max_new_tokens=12)
    for r in (json.loads(line) for line in out.read_text().splitlines()):
        ids = tok(chat_prompt(tok, r["prompt"]), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = torch_model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=12,
                                       pad_token_id=tok.pad_token_id, eos_token_id=stop_token_ids(tok))
        assert r["completions"][0]["text"] == tok.decode(ref[0, len(ids):], skip_special_tokens=True)


@pytest.mark.parametrize("method", ["oxa", "grpo"])
def test_training_runs_from_the_checkpoint_and_exports_the_family(folder, tmp_path, method):
    import torch
    from transformers import AutoModelForCausalLM

    from exploresft_jax.configs import tiny_cpu
    from exploresft_jax.train.launch import run

    family, path, _, _ = folder
    c = tiny_cpu.get_config()
    c.method, c.workdir, c.seed = method, str(tmp_path / method), 0
    c.model.init, c.model.path = "hf", str(path)
    c.tokenizer.train_bpe_vocab = 0
    c.data.synthetic_size, c.data.max_length = 32, 64
    c.batch.global_size = c.batch.ul_size = 8
    c.optim.num_steps = 2
    c.checkpoint.every_steps = 2
    c.log.every_steps, c.log.tensorboard, c.log.plots = 1, False, False
    c.grpo.prompts_per_step, c.grpo.group_size, c.grpo.max_new_tokens, c.grpo.sampler_rows = 2, 4, 8, 8
    c.grpo.sft_warmup_steps = 0
    last = run(c)
    assert np.isfinite(last["loss"])
    export = tmp_path / method / "hf_export"
    reloaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    assert reloaded.config.model_type == family
    assert json.loads((export / "config.json").read_text())["architectures"] == [type(reloaded).__name__]
