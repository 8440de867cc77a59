"""scripts/score_ppl.py against perplexities computed with transformers + PyTorch (float32)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from exploresft_jax.selection.perplexity import make_batches

from ..models.hf_fixtures import hf_logits
from ..models.tiny_folder import make_tiny_folder

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "score_ppl.py"
RESPONSES = [
    "Seven eights are fifty-six. The answer is \\boxed{56}.",
    "x = 7",
    "Let's add the tens then the ones: 10 + 30 = 40, 2 + 5 = 7, so \\boxed{47}. " * 6,
    "The remaining angle is 50 degrees.",
    "So",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tok, torch_model = make_tiny_folder(folder, tie=False, kv_heads=2)
    data = folder / "in.jsonl"
    with open(data, "w") as f:
        for i, r in enumerate(RESPONSES):
            f.write(json.dumps({"id": i, "prompt": f"Question {i}: solve it.", "response": r}) + "\n")
    return folder, tok, torch_model, data


def _run(args):
    main = runpy.run_path(str(SCRIPT))["main"]
    return main(args)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_response_only_ppl_matches_transformers(setup, tmp_path):
    folder, tok, torch_model, data = setup
    out = tmp_path / "out.jsonl"
    assert _run(["--model", str(folder), "--input", str(data), "--output", str(out), "--max-batch-tokens", "64"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(RESPONSES)))  # input order, fields kept
    for r in rows:
        ids = np.asarray(tok(r["response"])["input_ids"])
        if len(ids) < 2:
            assert r["num_tokens"] == 0 and r["ppl"] is None
            continue
        lp = _log_softmax(hf_logits(torch_model, ids[None]).astype(np.float64))[0]
        mean = lp[np.arange(len(ids) - 1), ids[1:]].mean()
        assert r["num_tokens"] == len(ids) - 1
        assert abs(r["ppl"] - np.exp(-mean)) / np.exp(-mean) < 1e-3
        assert abs(r["mean_logprob"] - mean) < 1e-4


def test_prompt_conditioned_ppl_matches_transformers(setup, tmp_path):
    folder, tok, torch_model, data = setup
    out = tmp_path / "out.jsonl"
    assert _run(["--model", str(folder), "--input", str(data), "--output", str(out), "--condition-on-prompt"]) == 0
    for r in (json.loads(line) for line in out.read_text().splitlines()):
        msgs = [{"role": "user", "content": r["prompt"]}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": r["response"]}], tokenize=False)
        p_ids, r_ids = tok(prompt)["input_ids"], tok(full[len(prompt):])["input_ids"]
        assert tok.decode(r_ids).endswith("<|im_end|>\n")
        ids = np.asarray(p_ids + r_ids)
        lp = _log_softmax(hf_logits(torch_model, ids[None]).astype(np.float64))[0]
        mean = lp[np.arange(len(p_ids) - 1, len(ids) - 1), ids[len(p_ids):]].mean()
        assert r["num_tokens"] == len(r_ids)
        assert abs(r["ppl"] - np.exp(-mean)) / np.exp(-mean) < 1e-3


def test_bad_record_names_file_and_line(setup, tmp_path, capsys):
    import exploresft_jax.cli as cli

    folder = setup[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"response": "ok"}\n{"text": "no response field"}\n')
    out = tmp_path / "out.jsonl"
    out.write_text("previous output\n")
    main = runpy.run_path(str(SCRIPT))["main"]
    assert cli.run(main, ["--model", str(folder), "--input", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:2" in err[0] and "'response'" in err[0]
    assert out.read_text() == "previous output\n"  # nothing lost


def test_batches_are_length_sorted_bucketed_and_cover_everything():
    lengths = [5, 300, 17, 64, 65, 1, 1000, 33]
    batches = make_batches(lengths, max_batch_tokens=512, batch_multiple=2)
    seen = sorted(i for _, idx in batches for i in idx)
    assert seen == list(range(len(lengths)))
    for length, idx in batches:
        assert length & (length - 1) == 0 and all(lengths[i] <= length for i in idx)
        assert len(idx) <= max(2, 512 // length)
    assert [b[0] for b in batches] == sorted((b[0] for b in batches), reverse=True)


def test_long_responses_with_blockwise_attention_match_transformers(setup, tmp_path):
    """Responses of 2,048+ tokens scored with --attention blockwise (several key blocks per row, none of them
    a [T, S] array) reproduce transformers' float32 perplexities within 1e-3."""
    folder, tok, torch_model, _ = setup
    rng = np.random.default_rng(0)
    words = ["Let's", "add", "the", "tens", "then", "ones:", "10", "+", "30", "=", "40,", "so", "\\boxed{47}."]
    long_texts = []
    for target in (2100, 2600):
        text = ""
        while len(tok(text)["input_ids"]) < target:
            text += " ".join(rng.choice(words, 64)) + " "
        long_texts.append(text)
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"response": t}) + "\n" for t in long_texts))
    out = tmp_path / "out.jsonl"
    assert _run(["--model", str(folder), "--input", str(data), "--output", str(out), "--attention", "blockwise",
                 "--dtype", "float32"]) == 0
    for r in (json.loads(line) for line in out.read_text().splitlines()):
        ids = np.asarray(tok(r["response"])["input_ids"])
        assert len(ids) >= 2048
        lp = _log_softmax(hf_logits(torch_model, ids[None]).astype(np.float64))[0]
        mean = lp[np.arange(len(ids) - 1), ids[1:]].mean()
        assert r["num_tokens"] == len(ids) - 1
        assert abs(r["ppl"] - np.exp(-mean)) / np.exp(-mean) < 1e-3


def test_grouped_scoring_matches_transformers_and_one_pass_per_group(setup):
    # num_groups > 1: each group's sums in one pass are transformers' float64 log-probs and entropies summed over
    # that group's tokens, and what scoring that group's tokens alone gives
    from exploresft_jax.models import hf
    from exploresft_jax.selection.perplexity import encode_for_scoring, score_token_lists

    folder, tok, torch_model, _ = setup
    model, mesh, rules = hf.load_for_inference(folder, dtype="float32")
    ids, scored = zip(*(encode_for_scoring(tok, r, f"Question {i}", condition_on_prompt=True)
                        for i, r in enumerate(RESPONSES)))
    rng = np.random.default_rng(0)
    groups = [np.where(np.asarray(m) > 0, rng.integers(1, 4, len(m)), 0).astype(np.int32) for m in scored]
    res = score_token_lists(model, list(ids), groups, num_groups=3, max_batch_tokens=64, mesh=mesh, rules=rules)
    assert res.sum_logprob.shape == res.num_tokens.shape == res.mean_entropy.shape == (len(RESPONSES), 3)
    for i, (row, grp) in enumerate(zip(ids, groups)):
        row = np.asarray(row)
        lp = _log_softmax(hf_logits(torch_model, row[None]).astype(np.float64))[0][:-1]  # position t scores t+1
        ent = -(np.exp(lp) * lp).sum(-1)
        tok_lp = lp[np.arange(len(row) - 1), row[1:]]
        for g in range(3):
            at = grp[1:] == g + 1
            assert res.num_tokens[i, g] == at.sum()
            np.testing.assert_allclose(res.sum_logprob[i, g], tok_lp[at].sum(), rtol=1e-4, atol=1e-4)
            if at.any():
                np.testing.assert_allclose(res.mean_entropy[i, g], ent[at].mean(), rtol=1e-4, atol=1e-5)
            else:
                assert np.isnan(res.mean_entropy[i, g])
    for g in range(3):
        one = score_token_lists(model, list(ids), [(x == g + 1).astype(np.int32) for x in groups],
                                max_batch_tokens=64, mesh=mesh, rules=rules)
        np.testing.assert_array_equal(res.num_tokens[:, g], one.num_tokens)
        np.testing.assert_allclose(res.sum_logprob[:, g], one.sum_logprob, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res.mean_entropy[:, g], one.mean_entropy, rtol=1e-5, atol=1e-6)
    everything = score_token_lists(model, list(ids), [(x > 0).astype(np.int32) for x in groups],
                                   max_batch_tokens=64, mesh=mesh, rules=rules)
    np.testing.assert_array_equal(res.num_tokens.sum(1), everything.num_tokens)
    np.testing.assert_allclose(res.sum_logprob.sum(1), everything.sum_logprob, rtol=1e-5, atol=1e-5)
